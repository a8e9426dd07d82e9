"""`python -m evaluation.fid`, the model card's command: the CLI of every metric (evaluation/measure.py), kept
under the name users know."""
import sys

from evaluation.measure import main

if __name__ == "__main__":
    sys.exit(main())
