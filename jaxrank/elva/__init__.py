"""ELVA (PAPERS.md §2): ranking-driven RL on top of contrastive training so an embedder
sees a query's fine-grained parts. Read top-down: reward, negatives, policies, RL steps,
recipe."""
