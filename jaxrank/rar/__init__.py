"""RAR (PAPERS.md §3): retrieve the top-k classes from a CLIP memory, then a vision-language
model ranks them. Read top-down: class memory, ranking text and scoring, ranking data,
ranker, recipe."""
