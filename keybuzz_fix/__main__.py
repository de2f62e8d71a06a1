"""Allow ``python -m keybuzz_fix``."""

from keybuzz_fix.cli import main

if __name__ == "__main__":
    main()
