"""Trained models shipped with kaecompress: NAME.safetensors (weights) and NAME.json (model card).
Load them with kaecompress.zoo.load_model(NAME); list them with `kaec models`."""
