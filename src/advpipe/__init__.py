"""advpipe: adversarial attacks and defenses on ImageNet classifiers.

Conventions shared by every module:

* images are float32 RGB in [0, 1], NHWC (224x224 unless a model says otherwise);
* every model owns its preprocessing and returns logits;
* so an attack's epsilon is always a distance in [0, 1] pixel space, and
  adversarial images are clipped to [0, 1].
"""

__version__ = "0.1.0"

from .models import preprocessing as _preprocessing  # noqa: E402,F401  (registers the custom Keras layers, so keras.models.load_model reads saved models)
