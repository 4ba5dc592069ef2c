"""The paper's Tables 1-3, transcribed exactly from the paper text (percent).

Source: Singla et al., "Low Curvature Activations Reduce Overfitting in Adversarial Training",
ICCV 2021 (``shared/paper/low_curvature_activations.txt``). Keys are ours; values are the
printed numbers, unrounded and uncorrected. Two inconsistencies are in the paper itself and are
kept as printed:

* Table 2, beta = 1 (SiLU): robust Diff is printed 7.31, but 56.15 - 48.91 = 7.24 (Table 1's SiLU
  row, with the same train/test numbers, prints 7.24).
* Table 3, k = 0 (ReLU): robust final test is printed 49.47; Table 1's ReLU row prints 49.25
  with the same train numbers (82.46 / 98.9 / 83.73).
"""

from __future__ import annotations

# Column order of Table 1, for each of "robust" and "standard".
TABLE1_COLUMNS = ("final_train", "final_test", "best_val", "diff")
# Column order of Tables 2 and 3 (final checkpoint only).
TABLE23_COLUMNS = ("final_train", "final_test", "diff")


def _row(values: tuple[float, ...], columns: tuple[str, ...]) -> dict[str, dict[str, float]]:
    n = len(columns)
    return {"robust": dict(zip(columns, values[:n], strict=True)),
            "standard": dict(zip(columns, values[n:], strict=True))}


# Table 1: dataset -> activation -> {"robust": {...}, "standard": {...}}
TABLE1: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "cifar10": {
        "lisht": _row((92.27, 47.21, 50.31, 45.06, 99.9, 82.53, 82.44, 17.37), TABLE1_COLUMNS),
        "relu": _row((82.46, 49.25, 51.06, 33.21, 98.9, 83.73, 81.62, 15.17), TABLE1_COLUMNS),
        "gelu": _row((65.45, 49.31, 50.15, 16.14, 92.41, 82.81, 79.25, 9.6), TABLE1_COLUMNS),
        "mish": _row((57, 49.18, 49.62, 7.82, 86.48, 80.05, 79.96, 6.43), TABLE1_COLUMNS),
        "silu": _row((56.15, 48.91, 49.41, 7.24, 85.79, 80.55, 80.57, 5.24), TABLE1_COLUMNS),
    },
    "cifar100": {
        "lisht": _row((93.58, 18.62, 22.48, 74.96, 99.92, 49.12, 49.13, 50.8), TABLE1_COLUMNS),
        "relu": _row((79.87, 18.81, 25.91, 61.06, 98.58, 51.58, 51.05, 47), TABLE1_COLUMNS),
        "gelu": _row((57.96, 21.56, 26.33, 36.4, 89.18, 53.67, 49.5, 35.51), TABLE1_COLUMNS),
        "mish": _row((39.65, 24.27, 25.88, 15.38, 71.5, 53.43, 48.37, 18.07), TABLE1_COLUMNS),
        "silu": _row((37.81, 24.29, 25.82, 13.52, 68.73, 52.65, 52.18, 16.08), TABLE1_COLUMNS),
    },
}

# Table 2: PSwish beta -> {"robust": {...}, "standard": {...}} (final checkpoint, CIFAR-10)
TABLE2: dict[float, dict[str, dict[str, float]]] = {
    0.5: _row((47.00, 45.24, 1.76, 75.39, 73.57, 1.82), TABLE23_COLUMNS),
    1.0: _row((56.15, 48.91, 7.31, 85.79, 80.55, 5.24), TABLE23_COLUMNS),
    2.0: _row((69.65, 49.6, 20.05, 94.57, 83.39, 11.18), TABLE23_COLUMNS),
    4.0: _row((83, 49.92, 33.08, 98.82, 84.48, 14.34), TABLE23_COLUMNS),
    10.0: _row((89.2, 50.63, 38.57, 99.7, 83.57, 16.13), TABLE23_COLUMNS),
}

# Table 3: LeakyReLU slope k -> {"robust": {...}, "standard": {...}} (final, CIFAR-10)
TABLE3: dict[float, dict[str, dict[str, float]]] = {
    0.5: _row((52.74, 48.71, 4.03, 82.99, 79.56, 3.43), TABLE23_COLUMNS),
    0.3: _row((63.06, 49.62, 13.44, 92.00, 83.56, 8.44), TABLE23_COLUMNS),
    0.2: _row((69.64, 49.34, 20.3, 95.37, 84.21, 11.16), TABLE23_COLUMNS),
    0.0: _row((82.46, 49.47, 32.99, 98.9, 83.73, 15.17), TABLE23_COLUMNS),
    -0.2: _row((85.89, 48.16, 37.73, 99.47, 83.01, 16.46), TABLE23_COLUMNS),
}
