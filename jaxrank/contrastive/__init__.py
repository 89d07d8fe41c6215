"""The dual-encoder toolbox (build, inputs, embedders, knowledge-base embeddings, restore)
and the contrastive recipe that trains the frozen scorers of the papers."""
