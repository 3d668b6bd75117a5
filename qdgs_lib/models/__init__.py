"""The networks the project trains: IR-ResNet face-recognition backbones, their margin softmax
heads (AdaFace, ArcFace, CosFace) and the small shape classifiers."""
