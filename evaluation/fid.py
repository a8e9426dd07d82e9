"""`python -m evaluation.fid`: not implemented yet (the evaluation issue fills it in)."""
import sys


def main() -> int:
    print("error: evaluation.fid is not implemented yet; the trained generator is <run_dir>/generator.pt", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
