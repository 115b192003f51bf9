"""One call from a name (and a weights file) to a model ready to fine-tune: t2tvit.create_model."""
import logging

from . import checkpoint, t2t
from .sizes import image_hw

log = logging.getLogger("t2tvit")


def create_model(name, pretrained=None, num_classes=1000, img_size=224, prefer="best", reset_head=False,
                 features_only=False, out_indices=3, **kwargs):
    """Build variant `name` for num_classes and img_size (S or (H, W)); load `pretrained` if given.

    pretrained: converted official weights, a weights file or training checkpoint of this repo (its 'best' of
    model/EMA unless prefer says 'model' or 'ema'), or whatever else checkpoint.load_file reads. Whatever does
    not fit the requested model and can be re-made is re-made: a head of another class count is initialised
    fresh (reset_head: one of the same count too, for other classes), the fixed sinusoid position table is
    regenerated for img_size. What was re-made is logged (logger 't2tvit') and kept in model.pretrained_notes;
    anything else that does not fit is one UserError line.
    features_only: the backbone of blocks out_indices (t2t.FeatureBackbone), made once the weights are loaded.
    kwargs (drop_path_rate, drop_rate, ...) go to the model.
    """
    model = t2t.create_model(name, num_classes=num_classes, img_size=image_hw(img_size), **kwargs)
    model.pretrained_notes = []
    if pretrained is not None:
        which, notes = checkpoint.load_weights(model, str(pretrained), prefer=prefer, drop_head=True,
                                               new_head=reset_head)
        model.pretrained_notes = notes
        log.info("loaded %s (%s) into %s", pretrained, which, name)
        for note in notes:
            log.info("  %s", note)
    return t2t.FeatureBackbone(model, out_indices) if features_only else model
