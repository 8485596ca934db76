"""Evaluation of the CT vision-language model and its survival head.

``text_metrics`` scores what the model writes: BLEU, ROUGE-L and an offline sentence-embedding
similarity for generated impressions and reports, and accuracy/precision/recall/specificity/F1 of
the yes/no answers to the predefined finding questions against labels extracted from held-out reports.
"""
