"""Builds the CO-RE BPF object into the package, so `pip install .` ships a working agent.

Needs clang and the libbpf headers at build time (Debian: clang llvm libbpf-dev); at run time
only libbpf1. The object is built from bpf/ with the same Makefile developers use.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithBpf(build_py):
    def run(self):
        super().run()
        out = os.path.join(os.path.abspath(self.build_lib), "otel_oom", "bpf")
        if shutil.which(os.environ.get("CLANG", "clang")) is None:
            raise SystemExit("building otel-oom needs clang and libbpf headers to compile its BPF program: "
                             "apt-get install clang llvm libbpf-dev")
        subprocess.check_call(["make", "-C", os.path.join(HERE, "bpf"), f"OUT={out}"])


setup(cmdclass={"build_py": BuildWithBpf})
