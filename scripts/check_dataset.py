"""Check a dataset before training (same as `python -m segkit.check_data`, see its docstring).

python scripts/check_dataset.py dataset=isbi dataset.root=/data/isbi weights=median
"""

from segkit.check_data import main

if __name__ == "__main__":
    main()
