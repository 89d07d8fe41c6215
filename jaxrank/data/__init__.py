"""Data: the synthetic benchmark worlds (Region-R1's cluttered queries, ELVA's multi-grain
benchmark), their tokenizer and galleries, resumable batches, and readers of the papers'
released files (E-VQA, InfoSeek, M-BEIR, CoOp's splits, few-shot sets, pool files)."""
