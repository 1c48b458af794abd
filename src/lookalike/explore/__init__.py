"""Looking closer at a model: compare, classify, robustness, feature maps."""
