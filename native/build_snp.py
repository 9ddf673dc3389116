"""cffi builder (API mode) for the SEV-SNP ioctl shim: ``skr.snp._snp_native``.

Why API mode: a real C compiler compiles ``snp_shim.c`` against ``<linux/sev-guest.h>``, so the
kernel's structure layout is the compiler's business (checked by ``_Static_assert``), never a
guess written down in Python. cffi releases the GIL around every call to a function declared in
``cdef`` (the generated wrapper brackets the call with ``Py_BEGIN_ALLOW_THREADS``), so a slow
firmware request never stalls other Python threads.

setuptools runs this file through ``setup(cffi_modules=["native/build_snp.py:ffibuilder"])``;
``pip install .`` and ``pip install -e .`` both compile it. Needs gcc and the Linux UAPI headers
(Debian: ``linux-libc-dev``). For a quick local build: ``python native/build_snp.py``.

The package version (from ``skr/__init__.py``) is compiled in as ``SKR_NATIVE_VERSION``;
``skr.snp._native`` refuses a module built for another version.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = NATIVE_DIR.parent
HEADER = NATIVE_DIR / "snp_shim.h"

# Integer constants resolved by the compiler ("...") so Python can never drift from C.
CONSTANTS = [
    "SKR_SNP_STAGE_OK",
    "SKR_SNP_STAGE_ARGUMENT",
    "SKR_SNP_STAGE_OPEN",
    "SKR_SNP_STAGE_IOCTL",
    "SKR_SNP_USER_DATA_LEN",
    "SKR_SNP_REPORT_RESP_LEN",
    "SKR_SNP_DERIVED_KEY_RESP_LEN",
    "SKR_SNP_MAX_VMPL",
    "SKR_SNP_CERTS_PAGE",
    "SKR_SNP_MAX_CERTS_LEN",
    "SNP_GET_REPORT",
    "SNP_GET_DERIVED_KEY",
    "SNP_GET_EXT_REPORT",
    "SNP_GUEST_VMM_ERR_INVALID_LEN",
    "SNP_GUEST_VMM_ERR_BUSY",
]


def package_version() -> str:
    """The version in skr/__init__.py (read as text: the package is not importable at build time)."""
    text = (PROJECT_DIR / "skr" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"\\]+)"\s*$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError('skr/__init__.py has no __version__ = "..." line')
    return match.group(1)


def cdef_text() -> str:
    """The declarations between the cdef markers of snp_shim.h, plus the constants."""
    header = HEADER.read_text(encoding="utf-8")
    match = re.search(r"/\* cdef-begin \*/(.*?)/\* cdef-end \*/", header, re.DOTALL)
    if match is None:
        raise RuntimeError(f"{HEADER} lacks the cdef-begin / cdef-end markers")
    defines = "\n".join(f"#define {name} ..." for name in CONSTANTS)
    return match.group(1) + "\n" + defines + "\n"


def _relative(path: Path) -> str:
    # setuptools wants source paths relative to the project; it runs us from the project root.
    return os.path.relpath(path, Path.cwd())


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "skr.snp._snp_native",
    '#include "snp_shim.h"\n#include <sys/ioctl.h>\n#include <linux/sev-guest.h>\n',
    sources=[_relative(NATIVE_DIR / "snp_shim.c")],
    include_dirs=[_relative(NATIVE_DIR)],
    define_macros=[("SKR_NATIVE_VERSION", '"' + package_version() + '"')],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(PROJECT_DIR), verbose=True)
