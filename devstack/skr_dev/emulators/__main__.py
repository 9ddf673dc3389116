"""``python -m skr_dev.emulators``: run the whole emulated Azure estate on loopback until interrupted.

Why: developers without SEV-SNP hardware or Azure want the emulators running as a process they can
point any client at (``skr dev`` adds the sidecar on top). Prints the state document (URLs, CA
file, identities, demo keys) as JSON on stdout and optionally writes it to ``--state-file``.

    python -m skr_dev.emulators [--config stack.json] [--state-file state.json] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from skr_dev import SIMULATED_BANNER
from skr_dev.emulators.stack import EmulatorStack, StackConfig

_logger = logging.getLogger("skr_dev.emulators")

_DEFAULT_KEYS = [
    {"name": "demo-rsa", "vault": "keyvault", "kty": "RSA-HSM"},
    {"name": "demo-ec", "vault": "keyvault", "kty": "EC-HSM", "crv": "P-256"},
    {"name": "demo-oct", "vault": "managedhsm", "kty": "oct-HSM"},
]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skr_dev.emulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="stack configuration JSON (see skr_dev.emulators.stack)")
    parser.add_argument("--state-file", type=Path, help="also write the state JSON here (mode 0600)")
    parser.add_argument("--state-dir", type=Path, help="where the CA and token files go (default: a temp dir)")
    return parser.parse_args(argv)


def _config(path: Path | None) -> StackConfig:
    if path is None:
        return StackConfig.from_mapping({"keys": _DEFAULT_KEYS})
    return StackConfig.from_json(path.read_bytes())


async def _run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with EmulatorStack(_config(args.config), state_dir=args.state_dir) as stack:
        _logger.warning("%s: emulators running on loopback", SIMULATED_BANNER)
        if args.state_file is not None:
            stack.write_state(args.state_file)
        json.dump(stack.state(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(args))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
