"""The networks, in PyTorch: the KAE layer, the CNN-KAE autoencoder, activations by name and the learned
entropy prior of codec models. Everything here needs the training install (torch)."""
