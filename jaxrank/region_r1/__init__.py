"""Region-R1 (PAPERS.md §1): keep the full query image or crop a region before a frozen
scorer re-ranks the pool; r-GRPO on ranking rewards. Read top-down: action, reward, r_grpo,
rerank, policy, recipe."""
