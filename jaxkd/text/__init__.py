"""Language-model text: tokenizers, the local-text TFDS corpus, packing and generation.

Importing this package registers the `text_files` TFDS builder (default corpus: the
running Python's standard library). See docs/lm.md.
"""

from jaxkd.text.generate import Generation as Generation
from jaxkd.text.generate import completion_batch as completion_batch
from jaxkd.text.generate import generate as generate
from jaxkd.text.generate import sample_token as sample_token
from jaxkd.text.generate import top_p_filter as top_p_filter
from jaxkd.text.lm_data import PackedText as PackedText
from jaxkd.text.lm_data import lm_eval_batches as lm_eval_batches
from jaxkd.text.lm_data import lm_train_batches as lm_train_batches
from jaxkd.text.lm_data import load_packed as load_packed
from jaxkd.text.lm_data import pack_texts as pack_texts
from jaxkd.text.lm_data import read_texts as read_texts
from jaxkd.text.packing import concat_documents as concat_documents
from jaxkd.text.packing import pack_documents as pack_documents
from jaxkd.text.packing import pack_stream as pack_stream
from jaxkd.text.text_builder import TextFiles as TextFiles
from jaxkd.text.text_builder import TextFilesConfig as TextFilesConfig
from jaxkd.text.text_builder import python_stdlib_dir as python_stdlib_dir
from jaxkd.text.tokenizer import ByteTokenizer as ByteTokenizer
from jaxkd.text.tokenizer import HFTokenizer as HFTokenizer
from jaxkd.text.tokenizer import Tokenizer as Tokenizer
from jaxkd.text.tokenizer import load_tokenizer as load_tokenizer
from jaxkd.text.vocab import check_vocab_compatible as check_vocab_compatible
from jaxkd.text.vocab import mask_padded_vocab as mask_padded_vocab
