#!/usr/bin/env python3
"""The documentation's links, checked: part of the test command.

Reads README.md, python/README.md, host/README.md (when it exists) and
docs/*.md. Every relative link, `[text](path)`, `[text](path#anchor)` or
`[text](#anchor)` (and reference definitions, `[name]: path`), must name a
file or folder that exists, and an anchor must name a heading of the target
Markdown file as GitHub spells it: lowercase, spaces to '-', punctuation
other than '-' and '_' dropped, '-1', '-2', ... after a repeated heading.
http(s) and mailto links are not followed, nor rustdoc's links to items
(`[Host](crate::Host)`, in host/README.md). README.md must also stay within
300 lines.

Prints each dead link as `file:line: link (why)` and exits 1 if there is
one; exits 0 and prints nothing else otherwise.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def documents():
    files = [ROOT / "README.md", ROOT / "python" / "README.md"]
    host = ROOT / "host" / "README.md"
    if host.exists():
        files.append(host)
    files += sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.exists()]


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        seen, found = {}, set()
        for _, line in prose_lines(path):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        for html in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")):
            found.add(html)
        _anchors[path] = found
    return _anchors[path]


def check(path):
    dead = []
    lines = dict(prose_lines(path))
    count = len(path.read_text(encoding="utf-8").splitlines())
    # The prose as one text (fenced lines blanked, code spans spaced out), so
    # that a link whose text wraps onto the next line is still seen.
    text = "\n".join(CODE_SPAN.sub(lambda m: " " * len(m.group(0)), lines.get(n, "")) for n in range(1, count + 1))
    found = [(m.start(1), m.group(1)) for m in INLINE.finditer(text)]
    # Reference definitions (`[name]: path`), which cannot interrupt a
    # paragraph: after a blank line or another definition.
    offset, previous = 0, ""
    for line in text.split("\n"):
        m = DEFINITION.match(line)
        if m and (not previous.strip() or DEFINITION.match(previous)):
            found.append((offset + m.start(1), m.group(1)))
        offset += len(line) + 1
        previous = line
    for at, target in sorted(found):
        number = text.count("\n", 0, at) + 1
        target = target.strip("<>")
        if not target or "::" in target:
            continue  # rustdoc's links to items (host/README.md is the crate's doc)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto: and other schemes
        file_part, _, anchor = target.partition("#")
        where = path if not file_part else (path.parent / file_part).resolve()
        shown = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not where.is_relative_to(ROOT):
            dead.append(f"{shown} (outside the repository)")
        elif not where.exists():
            dead.append(f"{shown} (no such file: {where.relative_to(ROOT)})")
        elif anchor and where.suffix == ".md" and where.is_file():
            if anchor not in anchors(where):
                dead.append(f"{shown} (no heading #{anchor} in {where.relative_to(ROOT)})")
        elif anchor and where.is_dir():
            dead.append(f"{shown} (an anchor into a folder)")
    return dead


def main():
    dead = []
    for path in documents():
        dead += check(path)
    readme = ROOT / "README.md"
    lines = len(readme.read_text(encoding="utf-8").splitlines())
    if lines > README_MAX_LINES:
        dead.append(f"README.md:{lines}: (the README has {lines} lines, more than {README_MAX_LINES})")
    for line in dead:
        print(line)
    if dead:
        print(f"check-links.py: {len(dead)} dead link(s) or limit(s) exceeded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
