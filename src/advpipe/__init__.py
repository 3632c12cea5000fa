"""advpipe: adversarial attacks and defenses on ImageNet classifiers.

Conventions shared by every module:

* images are float32 RGB in [0, 1], NHWC (224x224 unless a model says otherwise);
* every model owns its preprocessing and returns logits;
* so an attack's epsilon is always a distance in [0, 1] pixel space, and
  adversarial images are clipped to [0, 1].
"""

__version__ = "0.1.0"
