"""Search layer: the strategy contract (base, codec), archives, and the strategies over them."""
