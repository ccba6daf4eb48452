"""Registry of output decoders, keyed by the card's ``decoder.kind``."""

from __future__ import annotations

from agent.errors import ConfigError
from agent.inference.cards import LoadedCard
from agent.inference.decoders.anchors import AnchorsDecoder
from agent.inference.decoders.base import Decoder, Prediction
from agent.inference.decoders.classification import ClassificationDecoder
from agent.inference.decoders.raw import RawDecoder
from agent.inference.decoders.yolo import YoloDecoder

DECODERS: dict[str, type[Decoder]] = {
    cls.kind: cls for cls in (ClassificationDecoder, YoloDecoder, AnchorsDecoder, RawDecoder)
}


def create_decoder(loaded: LoadedCard) -> Decoder:
    """The card's decoder, with its labels; a labels file that does not fit the output is refused."""
    labels = loaded.labels()
    decoder = DECODERS[loaded.card.decoder.kind](loaded.card, labels)
    classes = decoder.classes()
    if labels is not None and classes is not None and len(labels) != classes:
        spec = loaded.card.decoder
        raise ConfigError(
            f"{loaded.path}: decoder.labels file {getattr(spec, 'labels', '')} has {len(labels)} labels, "
            f"but the {spec.kind} output has {classes} classes",
            hint="use the labels file that belongs to this model (one label per line, in class order)",
        )
    return decoder


__all__ = ["DECODERS", "Decoder", "Prediction", "create_decoder"]
