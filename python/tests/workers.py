"""What the processes of the production tests run: module-level, so that
multiprocessing can send them to spawned and forkserver children."""

import os

VAULT = "https://vault.azure.net/.default"
STORAGE = "https://storage.azure.com/.default"
AUDIENCE = {VAULT: "vault", STORAGE: "storage"}

# A credential made before a fork, for children that inherit it.
INHERITED = None


def mint(credential, calls):
    """``calls`` tokens alternating vault and storage: ``(pid, [(audience, token)])``."""
    out = []
    for i in range(calls):
        scope = (VAULT, STORAGE)[i % 2]
        out.append((AUDIENCE[scope], credential.get_token(scope).token))
    return os.getpid(), out


def mint_to_queue(queue, credential, calls):
    """:func:`mint` in a ``multiprocessing.Process``; ``None`` uses the inherited credential."""
    try:
        queue.put(mint(credential if credential is not None else INHERITED, calls))
    except BaseException as e:  # reported by the parent
        queue.put((os.getpid(), repr(e)))
