"""Evaluation of the CT vision-language model and its survival head.

``metrics``       survival metrics: Harrell's and Uno's C, td-AUC, integrated Brier score, the bootstrap.
``crossval``      the protocol: patient-level stratified folds, out-of-fold risks, method comparison.
``formatting``    numbers for files and readers: ``clean``/``dumps`` for JSON, ``fmt_*`` and p-values for humans.
``report``        the survival run's tables: results.json/.csv/.md, the ladder sentence, the terminal table.
``figures``       the survival run's figures: Kaplan–Meier by risk group, C-index forest, calibration, sweep.
``text_metrics``  what the model writes: BLEU, ROUGE-L, embedding similarity, yes/no answer scores.
``vlm_eval``      the pretrained model on held-out studies: generated answers and reports, scored.
"""
