"""Build of the one C extension (the SIP parser's fast path); everything else is in
pyproject.toml. setup.py because ext-modules in pyproject.toml is still experimental."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spitguard.sip._cparse",
            sources=["src/spitguard/sip/_cparse.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            # Without a compiler spitguard still installs and parses in pure Python
            # (slower); the test suite insists on the C path, so CI cannot miss it.
            optional=True,
        )
    ]
)
