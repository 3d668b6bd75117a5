"""Data: the shapes world, the toy world's "real" faces, captioned renders for training the
small CLIPs, face-recognition training sets (tensors, folders, RecordIO) and benchmarks."""
