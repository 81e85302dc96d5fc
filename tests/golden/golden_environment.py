"""The Python environment of the golden generators: diffusers 0.42.1, transformers 5.17.0 and PEFT 0.21.2.

Where this Python lacks them, they are installed into a virtual environment in build/golden-python (it sees the
system's torch 2.11) and the calling script is run again inside it.
"""
import os
import subprocess
import sys

VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "golden-python")


def ensure_environment():
    """Returns when diffusers, transformers and peft import; otherwise re-runs the script in the venv (created on
    first use)."""
    try:
        import diffusers, peft, transformers  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python3")
    if os.path.abspath(sys.prefix) == os.path.abspath(VENV):
        sys.exit("the environment %s lacks diffusers, transformers or peft" % VENV)
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", "--system-site-packages", VENV])
        subprocess.check_call([python, "-m", "pip", "install", "--quiet", "diffusers==0.42.1", "transformers==5.17.0",
                               "peft==0.21.2", "numpy"])
    os.execv(python, [python, *sys.argv])
