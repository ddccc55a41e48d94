"""Local tokenizers that speak the chat formats of the model families people fine-tune (no Hub at test time).

Each family is the SmolLM2 tokenizer plus that family's special tokens, BOS/EOS, BOS-adding behaviour and a
chat template written for these tests that renders the family's published conversation format:

    llama3   <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>...assistant...\n\nA<|eot_id|>
    llama2   <s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ [/INST] A </s>          (a space between answer and </s>)
    mistral  <s>[INST] Q [/INST]A</s>                                        (no system role)
    gemma    <bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n   (no system role)
    qwen2    <|im_start|>system\n(default)<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n...assistant\nA<|im_end|>\n
    phi3     <|user|>\nQ<|end|>\n<|assistant|>\nA<|end|>\n<|endoftext|>    (the template ends with eos too)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tokenizers import AddedToken
from tokenizers.processors import TemplateProcessing

NO_SYSTEM = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    specials: tuple[str, ...]
    bos: str
    eos: str
    end_of_turn: str  # the token that closes an assistant turn
    adds_bos: bool  # the tokenizer puts BOS before any text it encodes
    system_role: bool = True


FAMILIES = (
    Family(
        "llama3",
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        end_of_turn="<|eot_id|>",
        adds_bos=True,
    ),
    Family(
        "llama2",
        "{% if messages[0]['role'] == 'system' %}"
        "{% set head = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set turns = messages[1:] %}"
        "{% else %}{% set head = '' %}{% set turns = messages %}{% endif %}"
        "{% for m in turns %}{% if m['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (head if loop.first else '') + m['content'] | trim + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
        ("<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        end_of_turn="</s>",
        adds_bos=True,
    ),
    Family(
        "mistral",
        NO_SYSTEM + "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
        "[/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
        ("<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        end_of_turn="</s>",
        adds_bos=True,
        system_role=False,
    ),
    Family(
        "gemma",
        NO_SYSTEM + "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        end_of_turn="<end_of_turn>",
        adds_bos=True,
        system_role=False,
    ),
    Family(
        "qwen2",
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos="<|im_start|>",
        eos="<|im_end|>",
        end_of_turn="<|im_end|>",
        adds_bos=False,
    ),
    Family(
        "phi3",
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}",
        ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
        bos="<s>",
        eos="<|endoftext|>",
        end_of_turn="<|end|>",
        adds_bos=False,
    ),
)
BY_NAME = {family.name: family for family in FAMILIES}


def family_tokenizer(base, family: Family, with_template: bool = True):
    """A copy of `base` (the SmolLM2 tokenizer) turned into `family`'s tokenizer."""
    tokenizer = copy.deepcopy(base)
    tokens = dict.fromkeys((*family.specials, family.bos, family.eos))
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token = family.bos, family.eos
    tokenizer.pad_token = family.eos
    if family.adds_bos:
        bos_id = tokenizer.convert_tokens_to_ids(family.bos)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)]
        )
    tokenizer.chat_template = family.template if with_template else None
    return tokenizer
