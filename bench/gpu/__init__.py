"""GPU check: a bundle prepared here (prepare.py) and checked on a borrowed GPU machine (run.sh, check.py)."""
