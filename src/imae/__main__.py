"""``python -m imae ...`` (and ``torchrun ... -m imae ...``) runs the command line."""

from imae.cli import main

if __name__ == "__main__":
    main()
