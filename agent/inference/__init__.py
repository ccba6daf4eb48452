"""Local inference: model cards, backends, preprocessing, decoders, sources."""
