"""Data: sources and splits (datasets), decoding and cache (decode), batched augmentation (augment),
batch plans and loaders (loader), in-batch partner selection (pairing), image mixing (mixing)."""
