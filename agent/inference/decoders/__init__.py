"""Registry of output decoders, keyed by the card's ``decoder.kind``."""

from __future__ import annotations

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
    return DECODERS[loaded.card.decoder.kind](loaded.card, loaded.labels())


__all__ = ["DECODERS", "Decoder", "Prediction", "create_decoder"]
