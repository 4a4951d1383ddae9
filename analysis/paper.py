"""The paper's REPORTED numbers (Balestriero et al., arXiv 2312.01648, as summarised in
shared/reference/PAPER.md). They are references shown beside our results, never our results.
ROC-AUC in percent, latency in seconds per prompt on the authors' GPU with 7B models."""

PAPER_DETECTION = [  # (model, ROC-AUC %, latency s)
    ("Spline-Llama2-7B (linear, all layers)", 99.18, 0.061),
    ("Spline-Llama2-7B (3 layers, random forest)", 94.68, 0.005),
    ("Spline-Mistral-7B (linear)", 98.45, 0.066),
    ("Spline-Mistral-7B (3 layers, random forest)", 93.73, 0.006),
    ("martin-ha/toxic-comment-model", 73.57, 0.005),
    ("tomh/toxigen_roberta", 79.87, 0.017),
    ("nicholasKluge/ToxicityModel", 73.48, 0.008),
    ("unitary/toxic-bert", 65.20, 0.008),
    ("s-nlp/roberta_toxicity_classifier", 82.08, 0.008),
    ("citizenlab/distilbert-base-multilingual-cased-toxicity", 78.38, 0.005),
]
PAPER_DETECTION_NOTE = ("The paper scored the six public classifiers from hard labels, zero-shot, on truncated "
                        "inputs; every detector of ours is scored from continuous scores on the same folds.")

# Toxic vs clean, Llama-2-7B: clean = domain text (Pile subsets + Dolly) / + clean Jigsaw comments.
PAPER_TOXIC_VS_CLEAN = {
    "domains": {"spline_lr": 99.18, "spline_rf": 98.85},
    "domains+comments": {"spline_lr": 89.80, "spline_rf": 89.15},
}

# Self-training on toxic vs clean (domains), Llama-2-7B: label fraction -> AUC %.
PAPER_SEMI = {"lr": {0.20: 98.97, 0.10: 98.72, 0.05: 98.25},
              "rf": {0.20: 95.05, 0.10: 92.17, 0.05: 85.14}}

PAPER_DOMAINS = {
    "columns": ["DM Math.", "FreeLaw", "Github", "PubMed", "USPTO", "dollyQA", "jigsaw clean"],
    "RandomForest": [100.00, 99.94, 99.57, 99.87, 99.64, 98.93, 98.85],
    "LogisticRegression": [100.00, 99.85, 99.57, 99.92, 99.92, 99.47, 99.41],
}

PAPER_MULTILABEL = [  # (row, per-label AUC % in data.cleaning.JIGSAW_LABELS order, avg)
    ("Llama-2-7B 2 %", [80.59, 84.54, 80.62, 65.73, 80.49, 72.74], 77.45),
    ("Llama-2-7B 100 %", [86.25, 96.98, 89.09, 94.19, 88.53, 91.80], 91.14),
    ("Mistral-7B 2 %", [82.32, 75.09, 82.17, 54.99, 80.34, 69.32], 74.04),
    ("Mistral-7B 100 %", [89.28, 95.14, 90.46, 92.31, 90.88, 92.50], 91.76),
]
DETOXIFY_JIGSAW_AUC = 98.64
