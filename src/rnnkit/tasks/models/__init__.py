"""Task models: rnnkit's recurrent layers with an input in front and an output behind, one module each.

    recurrent.py    the layer stack every model uses (cells, LSTM forget gates)
    classifier.py   SequenceClassifier: many-to-one (sentiment, UCR, Fashion-MNIST, adding)
    language.py     LanguageModel: aligned many-to-many, stateful (lm, copy)
    seq2seq.py      Seq2Seq: encoder-decoder with attention (g2p, translate)
    captioner.py    Captioner: a conv encoder starting a word decoder (caption)
    tagger.py       Tagger: bidirectional tagger, softmax or CRF output (tag)
    attention.py    additive and multiplicative attention over a padded memory
    crf.py          a linear-chain CRF (forward algorithm, Viterbi)
"""

from .attention import AdditiveAttention, MultiplicativeAttention, make_attention
from .captioner import Captioner
from .classifier import SequenceClassifier
from .crf import LinearChainCRF
from .language import LanguageModel
from .recurrent import CELLS, FORGET_BIAS, recurrent
from .seq2seq import Seq2Seq
from .tagger import Tagger

__all__ = ["AdditiveAttention", "CELLS", "Captioner", "FORGET_BIAS", "LanguageModel", "LinearChainCRF",
           "MultiplicativeAttention", "Seq2Seq", "SequenceClassifier", "Tagger", "make_attention", "recurrent"]
