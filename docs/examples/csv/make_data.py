"""Stand-in for your own data: write wine.csv (178 wines, 13 measurements, a cultivar label).

Any CSV with a header row, numeric feature columns and an integer label column works the same.
"""

import csv

from sklearn.datasets import load_wine

data = load_wine()
with open("wine.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*data.feature_names, "label"])
    for row, label in zip(data.data, data.target, strict=True):
        writer.writerow([*(f"{v:g}" for v in row), int(label)])
print(f"wrote wine.csv: {len(data.target)} rows")
