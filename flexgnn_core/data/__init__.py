"""The graph data layer: cleaning, synthetic graphs, the on-disk format, OGB and user files."""
