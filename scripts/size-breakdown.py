#!/usr/bin/env python3
"""Where the bytes of a WebAssembly component (or core module) go.

    scripts/size-breakdown.py [--top N] [--crate NAME] [--functions] FILE.wasm

Build an unstripped copy first, so that the core module keeps its name
section (the code is the same as the stripped release build's):

    CARGO_PROFILE_RELEASE_STRIP=false cargo build --lib --target wasm32-wasip2 \\
        --release --target-dir /tmp/size-target
    scripts/size-breakdown.py /tmp/size-target/wasm32-wasip2/release/vd_cred_broker.wasm

It parses the binary itself (python3's standard library only): the
component's sections, the core modules embedded in it, the largest core
module's sections and its `name` section. Code-section bytes (each body
with its size prefix) are attributed to functions by the name section, and
functions to crates by demangling their names (Rust v0 `_R...`, legacy
`_ZN...E`, or names the linker already demangled):

- a function belongs to the crate of its path; a method in an `impl`
  block (v0 `M`/`X`) to the crate the impl is written in (so
  `<serde_json::Value as core::fmt::Display>::fmt` is serde_json's), a
  trait's provided method (v0 `Y`) to the trait's crate;
- `core::ptr::drop_in_place::<T>` (drop glue) to `T`'s crate;
- std, core and alloc (and std's `__rustc` shims) are one group,
  `std/core/alloc`; C symbols from
  wasi-libc are `dlmalloc` (the allocator) or `libc`; unnamed functions
  and anything else unparsed are `?`.

The last line, "file without custom sections", is the file minus every
custom section (names, debug info, producers); a `strip = true` build
still keeps the component-level `component-name` section.
"""

import argparse
import re
import sys
from collections import defaultdict

STD = "std/core/alloc"
STD_CRATES = {"std", "core", "alloc", "__rustc", "std_detect", "panic_abort", "rustc_demangle"}
DLMALLOC = {
    "malloc", "free", "calloc", "realloc", "aligned_alloc", "posix_memalign",
    "memalign", "dlmalloc", "dlfree", "dlrealloc", "dlcalloc", "internal_memalign",
    "dispose_chunk", "sbrk", "try_realloc_chunk", "init_mparams", "init_top",
    "init_bins", "add_segment", "prepend_alloc", "tmalloc_large", "tmalloc_small",
    "sys_alloc", "sys_trim", "release_unused_segments", "malloc_usable_size",
}


# --- binary reading ---------------------------------------------------------

def leb_u(data, i):
    """Unsigned LEB128 at `i`: (value, next index)."""
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def sections(data, start):
    """(id, payload start, payload end, header start) of each section after a preamble."""
    i = start
    while i < len(data):
        sid = data[i]
        size, j = leb_u(data, i + 1)
        yield sid, j, j + size, i
        i = j + size


def name_of(data, i):
    n, j = leb_u(data, i)
    return data[j:j + n].decode("utf-8", "replace"), j + n


COMPONENT_SECTIONS = {
    0: "custom", 1: "core module", 2: "core instance", 3: "core type",
    4: "component", 5: "instance", 6: "alias", 7: "type", 8: "canon",
    9: "start", 10: "import", 11: "export", 12: "value",
}
CORE_SECTIONS = {
    0: "custom", 1: "type", 2: "import", 3: "function", 4: "table",
    5: "memory", 6: "global", 7: "export", 8: "start", 9: "element",
    10: "code", 11: "data", 12: "datacount", 13: "tag",
}


def is_component(data):
    return data[:4] == b"\0asm" and data[4:8] == b"\x0d\x00\x01\x00"


def core_module(data, base=0):
    """Parse a core module: section sizes, code bodies, function names."""
    mod = {"size": len(data), "sections": defaultdict(int), "custom": defaultdict(int),
           "bodies": [], "names": {}, "imported_funcs": 0, "data_segments": 0}
    for sid, start, end, header in sections(data, 8):
        kind = CORE_SECTIONS.get(sid, f"id {sid}")
        mod["sections"][kind] += end - header
        if sid == 0:
            cname, _ = name_of(data, start)
            mod["custom"][cname] += end - header
            if cname == "name":
                parse_names(data, start, end, mod)
        elif sid == 2:  # imports: count the functions
            count, i = leb_u(data, start)
            for _ in range(count):
                _, i = name_of(data, i)
                _, i = name_of(data, i)
                kind_byte = data[i]
                i += 1
                if kind_byte == 0:
                    mod["imported_funcs"] += 1
                    _, i = leb_u(data, i)
                elif kind_byte == 1:  # table: reftype, limits
                    i += 1
                    i = skip_limits(data, i)
                elif kind_byte == 2:
                    i = skip_limits(data, i)
                elif kind_byte == 3:
                    i += 2
                elif kind_byte == 4:
                    i += 1
                    _, i = leb_u(data, i)
        elif sid == 10:
            count, i = leb_u(data, start)
            for _ in range(count):
                size, j = leb_u(data, i)
                mod["bodies"].append(j + size - i)
                i = j + size
        elif sid == 11:
            mod["data_segments"], _ = leb_u(data, start)
    return mod


def skip_limits(data, i):
    flags = data[i]
    i += 1
    _, i = leb_u(data, i)
    if flags & 1:
        _, i = leb_u(data, i)
    return i


def parse_names(data, start, end, mod):
    _, i = name_of(data, start)  # "name"
    while i < end:
        sub = data[i]
        size, j = leb_u(data, i + 1)
        if sub == 1:  # function names
            count, k = leb_u(data, j)
            for _ in range(count):
                idx, k = leb_u(data, k)
                name, k = name_of(data, k)
                mod["names"][idx] = name
        i = j + size


# --- demangling -------------------------------------------------------------

class Fail(Exception):
    pass


BASIC = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32",
    "h": "u8", "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128",
    "o": "u128", "s": "i16", "t": "u16", "u": "()", "v": "...", "x": "i64",
    "y": "u64", "z": "!", "p": "_",
}


class V0:
    """Rust v0 symbol demangler (enough of the grammar for compiler output).

    Each parse returns (text, crate): the crate that owns the code."""

    def __init__(self, sym):
        self.s = sym
        self.i = 0
        self.depth = 0

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else ""

    def eat(self, c):
        if self.peek() == c:
            self.i += 1
            return True
        return False

    def next(self):
        if self.i >= len(self.s):
            raise Fail("eof")
        c = self.s[self.i]
        self.i += 1
        return c

    def base62(self):
        if self.eat("_"):
            return 0
        v = 0
        while True:
            c = self.next()
            if c == "_":
                return v + 1
            if c.isdigit():
                d = ord(c) - 48
            elif "a" <= c <= "z":
                d = ord(c) - 97 + 10
            elif "A" <= c <= "Z":
                d = ord(c) - 65 + 36
            else:
                raise Fail("base62")
            v = v * 62 + d

    def decimal(self):
        if self.eat("0"):
            return 0
        start = self.i
        while self.peek().isdigit():
            self.i += 1
        if start == self.i:
            raise Fail("decimal")
        return int(self.s[start:self.i])

    def disambiguator(self):
        return self.base62() + 1 if self.eat("s") else 0

    def ident(self):
        dis = self.disambiguator()
        punycode = self.eat("u")
        n = self.decimal()
        self.eat("_")
        text = self.s[self.i:self.i + n]
        if len(text) != n:
            raise Fail("ident")
        self.i += n
        return (("punycode{" + text + "}") if punycode else text), dis

    def backref(self, parse):
        pos = self.base62()
        if pos >= self.i or self.depth > 100:
            raise Fail("backref")
        saved = self.i
        self.i = pos
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1
            self.i = saved

    def path(self):
        c = self.next()
        if c == "C":
            name, _ = self.ident()
            return name, name
        if c == "M":
            self.disambiguator()
            _, crate = self.path()
            ty, _ = self.type()
            return f"<{ty}>", crate
        if c == "X":
            self.disambiguator()
            _, crate = self.path()
            ty, _ = self.type()
            trait, _ = self.path()
            return f"<{ty} as {trait}>", crate
        if c == "Y":
            ty, _ = self.type()
            trait, crate = self.path()
            return f"<{ty} as {trait}>", crate
        if c == "N":
            ns = self.next()
            inner, crate = self.path()
            name, dis = self.ident()
            if ns.isupper():
                kind = {"C": "closure", "S": "shim"}.get(ns, ns)
                label = f"{{{kind}:{name}#{dis}}}" if name else f"{{{kind}#{dis}}}"
                return f"{inner}::{label}", crate
            return f"{inner}::{name}", crate
        if c == "I":
            inner, crate = self.path()
            args = []
            arg_crates = []
            while not self.eat("E"):
                text, arg_crate = self.generic_arg()
                args.append(text)
                arg_crates.append(arg_crate)
            if inner.endswith("::drop_in_place") and arg_crates and arg_crates[0]:
                crate = arg_crates[0]  # drop glue: the dropped type's crate
            return f"{inner}::<{', '.join(args)}>", crate
        if c == "B":
            return self.backref(self.path)
        raise Fail(f"path {c}")

    def generic_arg(self):
        if self.eat("L"):
            self.base62()
            return "'_", None
        if self.eat("K"):
            return self.const(), None
        return self.type()

    def const(self):
        if self.eat("B"):
            return self.backref(self.const)
        if self.eat("p"):
            return "_"
        c = self.peek()
        if c in BASIC:
            self.i += 1
            neg = self.eat("n")
            start = self.i
            while self.next() != "_":
                pass
            digits = self.s[start:self.i - 1]
            value = int(digits, 16) if digits else 0
            if c == "b":
                return "true" if value else "false"
            return ("-" if neg else "") + str(value)
        raise Fail("const")

    def lifetime(self):
        if self.eat("L"):
            self.base62()

    def type(self):
        c = self.peek()
        if c in BASIC and c != "p" or (c == "p"):
            self.i += 1
            return BASIC[c], None
        self.i += 1
        if c == "A":
            ty, crate = self.type()
            return f"[{ty}; {self.const()}]", crate
        if c == "S":
            ty, crate = self.type()
            return f"[{ty}]", crate
        if c == "T":
            items = []
            crate = None
            while not self.eat("E"):
                ty, item_crate = self.type()
                items.append(ty)
                crate = crate or item_crate
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")", crate
        if c in "RQ":
            self.lifetime()
            ty, crate = self.type()
            return ("&" if c == "R" else "&mut ") + ty, crate
        if c in "PO":
            ty, crate = self.type()
            return ("*const " if c == "P" else "*mut ") + ty, crate
        if c == "F":
            if self.eat("G"):
                self.base62()
            unsafe = self.eat("U")
            if self.eat("K"):
                if not self.eat("C"):
                    self.ident()
            params = []
            while not self.eat("E"):
                params.append(self.type()[0])
            ret = self.type()[0]
            return ("unsafe " if unsafe else "") + f"fn({', '.join(params)}) -> {ret}", None
        if c == "D":
            if self.eat("G"):
                self.base62()
            traits = []
            crate = None
            while not self.eat("E"):
                trait, trait_crate = self.path()
                crate = crate or trait_crate
                while self.eat("p"):
                    self.ident()
                    self.type()
                traits.append(trait)
            self.lifetime()
            return "dyn " + " + ".join(traits), crate
        if c == "B":
            return self.backref(self.type)
        self.i -= 1
        return self.path()


def demangle_v0(name):
    body = name[2:]
    if body[:1].isdigit():
        raise Fail("version")
    parser = V0(body)
    text, crate = parser.path()
    return text, crate


LEGACY_ESCAPES = {
    "$SP$": "@", "$BP$": "*", "$RF$": "&", "$LT$": "<", "$GT$": ">",
    "$LP$": "(", "$RP$": ")", "$C$": ",",
}


def unescape_legacy(part):
    if part.startswith("_$"):
        part = part[1:]
    out = part.replace("..", "::")
    for k, v in LEGACY_ESCAPES.items():
        out = out.replace(k, v)
    return re.sub(r"\$u([0-9a-f]+)\$", lambda m: chr(int(m.group(1), 16)), out)


def demangle_legacy(name):
    i = name.index("N") + 1
    parts = []
    while name[i] != "E":
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        parts.append(name[j:j + n])
        i = j + n
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    return "::".join(unescape_legacy(p) for p in parts)


def crate_of_text(text):
    """The owning crate of a demangled (non-v0) path."""
    text = re.sub(r"::h[0-9a-f]{16}$", "", text)
    if text.startswith("<"):
        inner = text[1:]
        m = re.match(r"(?:&|\*const |\*mut |mut |dyn )*([A-Za-z_][A-Za-z0-9_]*)::", inner)
        if m:
            return m.group(1)
        m = re.search(r" as ([A-Za-z_][A-Za-z0-9_]*)::", inner)
        return m.group(1) if m else None
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", text)
    if m:
        crate = m.group(1)
        dropped = re.match(r"core::ptr::drop_in_place(?:::)?<(?:&|mut |dyn )*([A-Za-z_][A-Za-z0-9_]*)::", text)
        return dropped.group(1) if dropped else crate
    return None


def demangle(name):
    """(readable name, crate group) of a symbol."""
    crate = None
    text = name
    try:
        if name.startswith("_R"):
            text, crate = demangle_v0(name)
        elif name.startswith("_ZN") or name.startswith("__ZN"):
            text = demangle_legacy(name)
            crate = crate_of_text(text)
        else:
            crate = crate_of_text(name)
    except (Fail, ValueError, IndexError):
        m = re.search(r"C(?:s[0-9a-zA-Z]*_)?\d+_?([A-Za-z_][A-Za-z0-9_]*)", name[2:])
        crate = m.group(1) if name.startswith("_R") and m else None
    if crate is None:
        bare = name.split(".")[0]
        if bare in DLMALLOC or bare.startswith("dl"):
            crate = "dlmalloc"
        elif name.startswith("cabi_") or "#" in name or name.startswith("exports"):
            crate = "wit_bindgen"  # canonical-ABI glue the bindings generate
        elif re.fullmatch(r"[A-Za-z_.$][A-Za-z0-9_.$]*", name):
            crate = "libc"
        else:
            crate = "?"
    if crate in STD_CRATES:
        crate = STD
    return text, crate.replace("-", "_")


# --- report -----------------------------------------------------------------

def pct(part, whole):
    return f"{100.0 * part / whole:5.1f}%" if whole else "  -  "


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wasm")
    ap.add_argument("--top", type=int, default=30, help="functions to list (30)")
    ap.add_argument("--crate", help="list the functions of this crate group only")
    ap.add_argument("--functions", action="store_true",
                    help="print every function (bytes, crate, name), largest first")
    ap.add_argument("--width", type=int, default=110, help="cut names to this width")
    args = ap.parse_args()
    data = open(args.wasm, "rb").read()
    total = len(data)

    component_rows = defaultdict(int)
    modules = []
    custom_total = 0
    if is_component(data):
        for sid, start, end, header in sections(data, 8):
            kind = COMPONENT_SECTIONS.get(sid, f"id {sid}")
            if sid == 1:
                modules.append((header, data[start:end], end - start))
            elif sid == 0:
                custom_total += end - header
                component_rows["custom: " + name_of(data, start)[0]] += end - header
            else:
                component_rows[kind] += end - header
    elif data[:4] == b"\0asm":
        modules.append((0, data, len(data)))
    else:
        sys.exit(f"{args.wasm}: not a wasm binary")
    if not modules:
        sys.exit("no core module in the component")

    parsed = [core_module(m[1]) for m in modules]
    main_index = max(range(len(parsed)), key=lambda k: parsed[k]["size"])
    mod = parsed[main_index]
    custom_total += sum(mod["custom"].values())
    for k, m in enumerate(parsed):
        if k != main_index:
            custom_total += sum(m["custom"].values())
            component_rows["other core modules (shims)"] += m["size"]

    # Functions.
    funcs = []
    for k, size in enumerate(mod["bodies"]):
        idx = mod["imported_funcs"] + k
        raw = mod["names"].get(idx, f"<func {idx}>")
        text, crate = demangle(raw) if idx in mod["names"] else (raw, "?")
        funcs.append((size, crate, text, raw))
    code = mod["sections"].get("code", 0)
    by_crate = defaultdict(lambda: [0, 0])
    for size, crate, _, _ in funcs:
        by_crate[crate][0] += size
        by_crate[crate][1] += 1

    print(f"{args.wasm}: {total:,} bytes; {len(modules)} core module(s), "
          f"the main one {mod['size']:,} bytes; {'names found' if mod['names'] else 'NO name section (build with strip = false)'}")
    print()
    print("Code section by crate (function bodies; % of the code section)")
    print(f"  {'crate':<24} {'bytes':>9} {'%':>6} {'funcs':>6}")
    body_sum = sum(f[0] for f in funcs)
    for crate, (size, count) in sorted(by_crate.items(), key=lambda kv: -kv[1][0]):
        print(f"  {crate:<24} {size:>9,} {pct(size, code)} {count:>6}")
    print(f"  {'(section header, count)':<24} {code - body_sum:>9,}")
    print(f"  {'code section':<24} {code:>9,} {pct(code, code)} {len(funcs):>6}")

    chosen = [f for f in funcs if args.crate is None or f[1] == args.crate]
    chosen.sort(key=lambda f: -f[0])
    limit = len(chosen) if args.functions else args.top
    print()
    what = f"of {args.crate} " if args.crate else ""
    print(f"Top {min(limit, len(chosen))} functions {what}(bytes, % of code, crate, name)")
    for size, crate, text, _ in chosen[:limit]:
        name = text if len(text) <= args.width else text[:args.width - 3] + "..."
        print(f"  {size:>7,} {pct(size, code)} {crate:<16} {name}")

    print()
    print("Main core module by section (bytes, % of the file)")
    for kind, size in sorted(mod["sections"].items(), key=lambda kv: -kv[1]):
        extra = ""
        if kind == "custom":
            extra = "  (" + ", ".join(f"{n} {s:,}" for n, s in
                                      sorted(mod["custom"].items(), key=lambda kv: -kv[1])) + ")"
        if kind == "data":
            extra = f"  ({mod['data_segments']} segments)"
        print(f"  {kind:<12} {size:>9,} {pct(size, total)}{extra}")
    print(f"  {'module':<12} {mod['size']:>9,} {pct(mod['size'], total)}")

    if component_rows:
        print()
        print("Component level, outside the main core module (bytes, % of the file)")
        for kind, size in sorted(component_rows.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<28} {size:>9,} {pct(size, total)}")
        framing = total - mod["size"] - sum(component_rows.values())
        print(f"  {'preamble and framing':<28} {framing:>9,} {pct(framing, total)}")

    print()
    print("Totals")
    print(f"  {'code':<34} {code:>9,}")
    print(f"  {'data':<34} {mod['sections'].get('data', 0):>9,}")
    print(f"  {'custom sections (all levels)':<34} {custom_total:>9,}")
    print(f"  {'file':<34} {total:>9,}")
    print(f"  {'file without custom sections':<34} {total - custom_total:>9,}")


if __name__ == "__main__":
    main()
