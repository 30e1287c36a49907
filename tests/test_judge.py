"""MLLMJudge on tiny Qwen2-VL models: the real code paths with random (or briefly trained) weights."""

import warnings
from collections.abc import Sequence

import pytest
import torch
from PIL import Image

import dataset_builders.judge as judge_module
from dataset_builders import JudgeEnsemble, MLLMJudge, PreferenceJudge
from dataset_builders.judge import answer_token
from dataset_builders.testing import ColourJudge, tiny_image_text_model, tiny_judge, tiny_thinking_tokenizer
from dataset_builders.vlm_inputs import QwenVLPromptEncoder, offloaded_tensor
from modeling_maple.testing import tiny_image_processor, tiny_tokenizer
from official_processors import PIXTRAL_12B_CHAT_TEMPLATE, official_processor


def _noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _sharpened(judge: MLLMJudge) -> MLLMJudge:
    """`judge` with large random weights, so alphas spread well away from 0.5."""
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.normal_(0.0, 0.3)
    return judge


@pytest.fixture(scope="module")
def sharp_judge() -> MLLMJudge:
    return _sharpened(tiny_judge(seed=1, batch_size=3))


IMAGES = [_noise_image(0), _noise_image(1, (40, 24)), Image.new("RGB", (32, 32), "red")]
TEXTS = [
    ["a red circle", "a blue square left of a circle", "two"],
    ["a", "three small stars above a big green triangle", "no", "Yes"],
    ['a "quoted" {braced} caption', ""],
]


def test_prefix_reuse_passes_the_kv_cache_under_the_name_the_installed_transformers_takes(sharp_judge):
    """transformers 5.24 renamed the forward's and the outputs' `past_key_values` to `cache` (the old name warns and
    goes in 5.40); 5.23, which setup.cfg allows, takes only `past_key_values`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        sharp_judge.score(IMAGES[:1], TEXTS[:1])
        tiny_judge(seed=4, family="llava").score(IMAGES[:1], TEXTS[:1])

    class Before524(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs): ...

    class Since524(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None, **kwargs): ...

    assert (judge_module.cache_keyword(Before524()), judge_module.cache_keyword(Since524())) == ("past_key_values", "cache")


def test_judge_satisfies_the_protocol(sharp_judge):
    assert isinstance(sharp_judge, PreferenceJudge)


def test_alphas_are_probabilities_with_one_per_candidate(sharp_judge):
    alphas = sharp_judge.score(IMAGES, TEXTS)
    assert [a.shape for a in alphas] == [torch.Size([len(t)]) for t in TEXTS]
    flat = torch.cat(alphas)
    assert flat.dtype == torch.float32
    assert ((flat >= 0) & (flat <= 1)).all()
    assert flat.max() - flat.min() > 0.05, "weights were scaled up so that alphas differ"


def test_prefix_reuse_equals_per_pair_scoring(sharp_judge):
    # batch_size 3 splits the 4 candidates of the second image over two suffix batches.
    reused = sharp_judge.score(IMAGES, TEXTS, reuse_prefix=True)
    per_pair = sharp_judge.score(IMAGES, TEXTS, reuse_prefix=False)
    for a, b in zip(reused, per_pair):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_prefix_groups_mix_grids_of_equal_token_count_and_uneven_candidate_lists(sharp_judge):
    # 32x32, 64x16 and 16x64 images all take 16 image tokens, but their M-RoPE grids (8x8, 4x16,
    # 16x4) differ, so text after them starts at different positions; 40x24 takes 15 tokens.
    images = [_noise_image(seed, size) for seed, size in enumerate([(32, 32), (64, 16), (40, 24), (16, 64), (32, 32)])]
    texts = [["a red circle", "two"], [], ["one", "a", "b c", "d e f", "g"], ["three small stars"], ["Yes", "No", "no"]]
    reused = sharp_judge.score(images, texts)  # batch_size 3: two groups of 16-token prefixes
    per_pair = sharp_judge.score(images, texts, reuse_prefix=False)
    assert [len(a) for a in reused] == [len(t) for t in texts]
    for a, b in zip(reused, per_pair):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_the_shared_prefix_path_holds_few_encoded_images_at_once(sharp_judge, monkeypatch):
    """It encoded every image of a call before the first forward, and the builder passes a whole shard (256 anchors
    and their candidate images at the defaults): many GB for large images. Now a prefix group runs once it fills, and
    the fullest runs early when too many images wait; here 7 prefix lengths, each twice, never fill a group of 3."""
    images = [_noise_image(seed, (16 + 8 * (seed % 7), 16)) for seed in range(14)]  # 18, 20, ..., 30 prefix tokens
    texts = [["a red circle", "two"] if seed % 2 else ["one"] for seed in range(14)]
    per_pair = sharp_judge.score(images, texts, reuse_prefix=False)
    monkeypatch.setattr(judge_module, "PENDING_PREFIX_BATCHES", 1)
    held, most_held = 0, 0
    encode_images, score_prefix_group = sharp_judge.prompt_encoder.encode_images, sharp_judge._score_prefix_group

    def encode_and_count(batch):
        nonlocal held, most_held
        held += len(batch)
        most_held = max(most_held, held)
        return encode_images(batch)

    def score_and_release(encoded, group_texts, cut_texts):
        nonlocal held
        scores = score_prefix_group(encoded, group_texts, cut_texts)
        held -= len(encoded)
        return scores

    monkeypatch.setattr(sharp_judge.prompt_encoder, "encode_images", encode_and_count)
    monkeypatch.setattr(sharp_judge, "_score_prefix_group", score_and_release)
    reused = sharp_judge.score(images, texts)
    assert held == 0 and most_held <= 1 * sharp_judge.batch_size
    for a, b in zip(reused, per_pair):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_per_pair_path_matches_the_model_forward_one_pair_at_a_time(sharp_judge):
    """Guards both paths against a shared mistake (positions, padding): compare with the plain
    transformers forward pass, which computes its own M-RoPE positions."""
    encoder = sharp_judge.prompt_encoder
    alphas = sharp_judge.score(IMAGES[:2], TEXTS[:2])
    for image, texts, expected in zip(IMAGES[:2], TEXTS[:2], alphas):
        for text, alpha in zip(texts, expected):
            images = encoder.encode_images([image])
            ids = sharp_judge.prefix_ids(images, 0) + sharp_judge.suffix_ids([text])[0]
            with torch.no_grad():
                logits = sharp_judge.model(**encoder.model_inputs([ids], images, padding_side="right")).logits[0, -1]
            reference = torch.softmax(logits[[sharp_judge.yes_id, sharp_judge.no_id]], dim=-1)[0]
            assert abs(reference.item() - alpha.item()) < 1e-5


def _short_context_judge(context: int) -> MLLMJudge:
    """A sharpened tiny Qwen2-VL judge whose language model was trained on `context` positions."""
    judge = _sharpened(tiny_judge(seed=1))
    judge.model.config.text_config.max_position_embeddings = context
    encoder = judge.prompt_encoder
    return MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor, batch_size=2)


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_a_text_too_long_for_the_judges_context_is_cut_to_fit_keeping_its_start_and_the_question(reuse_prefix, monkeypatch):
    """A 64-position judge was fed prompts of over 200 tokens: positions it never saw, the question and the answer
    slot far past them. Now only the text is cut, at its end; the image tokens and the question stay whole, and both
    scoring paths cut alike."""
    judge = _short_context_judge(64)
    assert judge.context_length == 64
    long_text = "a red circle left of a blue square " * 8
    texts = [["two", long_text], [long_text]]
    if reuse_prefix:
        with pytest.warns(UserWarning, match="cut to fit"):
            reference = judge.score(IMAGES[:2], texts, reuse_prefix=False)
    prompts = []
    forward = judge.model.model.forward

    def recording_forward(*args, **kwargs):
        prompts.append(kwargs["input_ids"])
        assert kwargs["attention_mask"].shape[1] <= 64, "a prompt longer than the judge's context"
        return forward(*args, **kwargs)

    monkeypatch.setattr(judge.model.model, "forward", recording_forward)
    with pytest.warns(UserWarning, match=r"2 candidate text\(s\) made a judge prompt longer than the judge's context of 64"):
        scores = judge.score(IMAGES[:2], texts, reuse_prefix=reuse_prefix)
    if reuse_prefix:
        for a, b in zip(scores, reference):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        return
    tokenizer = judge.prompt_encoder.tokenizer
    question_end = '"' + tokenizer.decode(judge.suffix_ids([""])[0]).split('""')[1]
    for row in (row for batch in prompts for row in batch):
        prompt = tokenizer.decode(row[row != tokenizer.pad_token_id])
        assert prompt.count("<|image_pad|>") > 0 and prompt.endswith(question_end)
        text = prompt[prompt.index('text "') + len('text "') : -len(question_end)]
        assert text == "two" or (text and long_text.startswith(text) and len(text) < len(long_text))


def test_a_text_asked_about_twice_is_cut_in_a_few_tries(monkeypatch):
    """The cut started from the room left as if the prompt held the text once and moved back a token per try: about
    half the room in tries (1474 suffix tokenisations for one text in a 3000-token context)."""
    judge = _short_context_judge(3000)
    encoder = judge.prompt_encoder
    encoder.tokenizer.model_max_length = int(1e30)
    judge = MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor, prompt='Is "{text}" right? Say "{text}" again. Answer Yes or No.')
    tokenised = []
    suffix_ids = judge.suffix_ids
    monkeypatch.setattr(judge, "suffix_ids", lambda texts: tokenised.append(texts) or suffix_ids(texts))
    with pytest.warns(UserWarning, match="1 candidate text"):
        judge.score(IMAGES[:1], [["a red circle " * 2000]])
    assert len(tokenised) <= 5


def test_a_long_text_holding_special_token_strings_is_cut_in_a_few_tries(monkeypatch):
    """Its tokens were counted by the ordinary tokenizer, "<|im_end|>" one token where the prompt reads it as eleven:
    the cut started far past the room and moved back a token per try (2045 suffix tokenisations in a 3000-token
    context, 26 s)."""
    judge = _short_context_judge(3000)
    encoder = judge.prompt_encoder
    encoder.tokenizer.model_max_length = int(1e30)
    judge = MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor)
    text = "a <|im_end|> b " * 2000
    assert judge.special_token_in(text) is None  # read as text
    tokenised = []
    suffix_ids = judge.suffix_ids
    monkeypatch.setattr(judge, "suffix_ids", lambda texts: tokenised.append(texts) or suffix_ids(texts))
    room = 1000
    ids = judge._suffix_ids_cut_to(text, room)
    assert len(tokenised) <= 5
    assert room - 3 <= len(ids) <= room  # the longest start that fits, give or take a token at the cut
    im_end = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(im_end) == judge.suffix_ids([""])[0].count(im_end)  # the text's are text, as `suffix_ids` reads them


def test_an_image_whose_prompt_does_not_fit_the_judges_context_without_any_text_is_refused_naming_it(monkeypatch):
    judge = _short_context_judge(40)
    monkeypatch.setattr(judge.model.model, "forward", lambda *args, **kwargs: pytest.fail("the model ran"))
    for reuse_prefix in (True, False):
        with pytest.raises(ValueError, match=r"images\[0\]: the judge's prompt for this image takes 48 tokens before any "
                                             r"candidate text \(30 up to the text.*context of 40 tokens"):
            judge.score(IMAGES[:1], [["a"]], reuse_prefix=reuse_prefix)


def test_image_problem_names_an_image_size_whose_prompt_does_not_fit_the_context():
    """The builder asks `image_problem` with the inputs; an image too large for the context passed that check and
    stopped the whole build when `score` met it. Its tokens follow its size (Pixtral's), counted once per size."""
    judge = tiny_judge(seed=0, family="pixtral")
    encoder = judge.prompt_encoder
    judge.model.config.text_config.max_position_embeddings = 57
    judge = MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor)
    assert judge.image_problem((16, 16)) is None
    assert judge.image_problem((32, 32)) == (
        "the judge's prompt for this image takes 89 tokens before any candidate text (81 up to the text, the image's "
        "included), over the judge's context of 57 tokens; give the judge smaller images (its image processor's size or "
        "max_pixels)"
    )
    with pytest.raises(ValueError, match=r"images\[0\]: the judge's prompt for this image takes 89 tokens"):
        judge.score([Image.new("RGB", (32, 32), "blue")], [["a blue square"]])
    assert set(judge._prefix_length_by_image_size) == {(16, 16), (32, 32)}


def test_the_context_is_the_smaller_of_the_models_positions_and_the_tokenizers_set_length():
    from dataset_builders.judge import context_length

    judge = tiny_judge(seed=0)
    tokenizer, model = judge.prompt_encoder.tokenizer, judge.model
    model.config.text_config.max_position_embeddings = 512
    tokenizer.model_max_length = 100
    assert context_length(model, tokenizer) == 100
    tokenizer.model_max_length = int(1e30)  # transformers' "unset"
    assert context_length(model, tokenizer) == 512


def test_a_bf16_judge_computes_its_yes_no_logits_in_float32(monkeypatch):
    """A bf16 head rounds logits near 20 to steps of 0.125, which merges close judgements into ties."""
    judge = tiny_judge(seed=0)
    judge.model.to(torch.bfloat16)
    head = judge.model.get_output_embeddings()
    rows = [judge.yes_id, judge.no_id]
    with torch.no_grad():
        head.weight[rows] = torch.randn(2, head.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 4
    hidden = torch.randn(256, head.in_features, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    expected = torch.softmax(hidden.float() @ head.weight[rows].float().T, dim=-1)[:, 0]
    bf16_head = torch.softmax(head(hidden)[:, rows].float(), dim=-1)[:, 0]
    assert (bf16_head - expected).abs().max() > 1e-3  # the rounding this test is about
    torch.testing.assert_close(judge._alphas(hidden), expected, atol=1e-6, rtol=0)
    # the same where a device map offloaded the head (meta weights; the rows come from its offload hook)
    from accelerate import cpu_offload

    cpu_offload(head, execution_device="cpu")
    assert head.weight.device.type == "meta"
    reads = []
    monkeypatch.setattr(judge_module, "offloaded_tensor", lambda *args: reads.append(args[1]) or offloaded_tensor(*args))
    for _ in range(3):
        torch.testing.assert_close(judge._alphas(hidden), expected, atol=1e-6, rtol=0)
    assert reads == ["weight"]  # once, not per batch: for disk offload a read loads the whole (vocab, hidden) matrix


def test_an_output_head_with_a_bias_adds_it_to_the_yes_no_logits():
    """Some language models' heads have a bias; alpha must be the softmax of the model's own Yes/No logits."""
    judge = tiny_judge(seed=0)
    head = judge.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    rows = [judge.yes_id, judge.no_id]
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[rows] = torch.tensor([3.0, -3.0])
    judge.model.set_output_embeddings(biased)
    hidden = torch.randn(8, head.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(biased(hidden)[:, rows], dim=-1)[:, 0]
    torch.testing.assert_close(judge._alphas(hidden), expected, atol=1e-6, rtol=0)


def test_shared_prefix_covers_the_question_head_and_keeps_tokenisation(sharp_judge):
    assert sharp_judge.prefix_text.endswith("Does the image align with the text")
    tokenizer = sharp_judge.prompt_encoder.tokenizer
    for text in [text for texts in TEXTS for text in texts]:
        whole = tokenizer(sharp_judge.prefix_text + sharp_judge.suffix_template.format(text=text), add_special_tokens=False)
        prefix = tokenizer(sharp_judge.prefix_text, add_special_tokens=False)["input_ids"]
        assert prefix + sharp_judge.suffix_ids([text])[0] == whole["input_ids"]


def test_a_prompt_cut_must_keep_the_tokenisation_of_every_probe_text(sharp_judge):
    """After "with the im" the byte-level BPE merges the probe "a red circle" into "ima" (as in "image") but keeps every
    other probe text apart: one text that tokenises differently makes the cut unusable."""
    marker = "\x00TEXT\x00"
    prefix, suffix = "align with the im", marker + "?"
    tokenizer = sharp_judge.prompt_encoder.tokenizer

    def consistent(text: str) -> bool:
        def ids(string: str) -> list[int]:
            return tokenizer(string, add_special_tokens=False)["input_ids"]

        return ids(prefix) + ids(suffix.replace(marker, text)) == ids(prefix + suffix.replace(marker, text))

    assert consistent("123") and not consistent("a red circle")
    assert not sharp_judge._tokenises_consistently(prefix, suffix, marker)


def test_score_images_scores_each_candidate_image_against_its_text(sharp_judge):
    txt2img = sharp_judge.score_images(["a red circle", "two"], [IMAGES, IMAGES[:1]])
    img2txt = sharp_judge.score(IMAGES, [["a red circle"]] * 3)
    torch.testing.assert_close(txt2img[0], torch.cat(img2txt), atol=1e-4, rtol=0)
    assert txt2img[1].shape == (1,)


def test_empty_candidate_list_gives_empty_tensor(sharp_judge):
    assert sharp_judge.score(IMAGES[:1], [[]])[0].shape == (0,)
    assert sharp_judge.score(IMAGES[:1], [[]], reuse_prefix=False)[0].shape == (0,)


def _train_to_prefer(judge: MLLMJudge, positives, negatives, steps: int = 60) -> None:
    """Fine-tune the whole tiny judge so that it answers Yes on `positives` and No on `negatives`."""
    encoder = judge.prompt_encoder
    pairs = [(image, text, 1) for image, text in positives] + [(image, text, 0) for image, text in negatives]
    images = encoder.encode_images([image for image, _, _ in pairs])
    suffixes = judge.suffix_ids([text for _, text, _ in pairs])
    sequences = [judge.prefix_ids(images, index) + suffix for index, suffix in enumerate(suffixes)]
    inputs = encoder.model_inputs(sequences, images, padding_side="right")
    targets = torch.tensor([1 - label for _, _, label in pairs])  # index 0 = Yes, 1 = No
    last = inputs["attention_mask"].sum(1) - 1
    optimizer = torch.optim.Adam(judge.model.parameters(), lr=3e-3)
    judge.model.train()
    for _ in range(steps):
        logits = judge.model(**inputs).logits[torch.arange(len(pairs)), last][:, [judge.yes_id, judge.no_id]]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    judge.model.eval()


def test_a_judge_trained_to_prefer_the_true_caption_ranks_it_first():
    judge = tiny_judge(seed=2)
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    captions = {"red": "a red circle", "blue": "a blue square"}
    _train_to_prefer(
        judge,
        positives=[(red, captions["red"]), (blue, captions["blue"])],
        negatives=[(red, captions["blue"]), (blue, captions["red"])],
    )
    candidates = ["a blue square", "a red circle"]
    red_alphas, blue_alphas = judge.score([red, blue], [candidates, candidates])
    assert candidates[int(red_alphas.argmax())] == captions["red"]
    assert candidates[int(blue_alphas.argmax())] == captions["blue"]
    # The image, not only the text, decides: each caption wins on its own image.
    txt2img = judge.score_images([captions["red"], captions["blue"]], [[blue, red], [red, blue]])
    assert [int(scores.argmax()) for scores in txt2img] == [1, 1]
    # ... and prefix reuse agrees with the per-pair path on a trained judge too.
    torch.testing.assert_close(
        torch.cat(judge.score([red, blue], [candidates, candidates], reuse_prefix=False)),
        torch.cat([red_alphas, blue_alphas]),
        atol=1e-4,
        rtol=0,
    )


def test_answer_token_follows_the_chat_template():
    tokenizer = tiny_tokenizer()
    judge = tiny_judge()
    assert tokenizer.convert_ids_to_tokens([judge.yes_id, judge.no_id]) == ["Yes", "No"]
    # A LLaVA-style template puts a space before the answer: the judge must read " Yes" ("ĠYes").
    spaced = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}<|image_pad|>{% else %}{{ p['text'] }}{% endif %}"
        "{% endfor %}{% else %} ASSISTANT: {{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    spaced_judge = MLLMJudge(tiny_image_text_model(), tokenizer, tiny_image_processor(), chat_template=spaced)
    assert tokenizer.decode([spaced_judge.yes_id]) == " Yes"
    assert tokenizer.decode([spaced_judge.no_id]) == " No"


# HuggingFaceTB/SmolVLM-Instruct's chat template (also transformers' SmolVLM default): it renders list content only
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def test_the_answer_token_of_a_template_that_renders_only_list_content_is_the_spaced_one():
    """SmolVLM's template rendered a plain-string answer as nothing, so the judge fell back to "Yes" / "No", which the
    model does not emit after "Assistant:" (it says " Yes"): every alpha was the ratio of two unlikely tokens."""
    judge = tiny_judge(family="smolvlm", chat_template=SMOLVLM_CHAT_TEMPLATE)
    tokenizer = judge.prompt_encoder.tokenizer
    assert [tokenizer.decode([token]) for token in (judge.yes_id, judge.no_id)] == [" Yes", " No"]


def test_a_template_that_renders_no_answer_falls_back_to_the_unspaced_answer_token():
    """A template that writes the assistant's turn header but never its content renders an answered conversation as
    the bare generation prompt: the token after it does not exist (an IndexError before the length check), and the
    judge reads the single-token spellings in order, "Yes" before " Yes"."""
    silent = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}<|image_pad|>{% else %}{{ p['text'] }}{% endif %}"
        "{% endfor %}{% else %} ASSISTANT:{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    tokenizer = tiny_tokenizer()
    judge = MLLMJudge(tiny_image_text_model(), tokenizer, tiny_image_processor(), chat_template=silent)
    assert [tokenizer.decode([token]) for token in (judge.yes_id, judge.no_id)] == ["Yes", "No"]


def test_a_thinking_template_has_the_judge_read_the_answer_after_the_empty_think_block():
    """The generation prompt ends in "<think>\n", where the model starts reasoning; the judge read alpha there (the token
    after the prompt was no "Yes", and it fell back to the bare one). Both scoring paths now feed the text the template
    writes before an answer, and read P(Yes) where the model trained on the answered conversation answers."""
    tokenizer = tiny_thinking_tokenizer()
    model = _sharpened(tiny_judge(seed=2)).model
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    judge = MLLMJudge(model, tokenizer, tiny_image_processor(), batch_size=2)
    assert judge.answer_lead == "\n</think>\n\n" and judge.settings["answer_lead"] == "\n</think>\n\n"
    reused, per_pair = judge.score(IMAGES[:2], TEXTS[:2]), judge.score(IMAGES[:2], TEXTS[:2], reuse_prefix=False)
    for image, candidates, image_alphas, image_alphas_per_pair in zip(IMAGES, TEXTS, reused, per_pair):
        encoded = judge.prompt_encoder.encode_images([image])
        for text, alpha, alpha_per_pair in zip(candidates, image_alphas, image_alphas_per_pair):
            question = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": judge.prompt.format(text=text)}]}
            answered = tokenizer.apply_chat_template([question, {"role": "assistant", "content": "Yes"}], tokenize=False)
            assert answered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nYes<|im_end|>\n")
            ids = judge.prompt_encoder.expand_images(answered[: answered.rindex("Yes")], encoded, [0])
            assert judge.prefix_ids(encoded, 0) + judge.suffix_ids([text])[0] == ids
            with torch.no_grad():
                logits = model(**judge.prompt_encoder.model_inputs([ids], encoded, padding_side="right")).logits[0, -1]
            expected = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=-1)[0].item()
            assert abs(alpha.item() - expected) < 1e-5 and abs(alpha_per_pair.item() - expected) < 1e-5


def test_a_template_whose_answer_does_not_follow_its_generation_prompt_is_refused():
    """Its answered conversation drops the open think block: where the answer starts after the prompt is unknown, and
    the judge read the bare "Yes" after "<think>\n"."""
    tokenizer = tiny_thinking_tokenizer(answer_closes_think_block=False)
    model = tiny_image_text_model()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with pytest.raises(ValueError, match=r"renders an answered conversation that does not continue its generation prompt"):
        MLLMJudge(model, tokenizer, tiny_image_processor())


def test_tokenizer_without_a_yes_token_is_rejected_clearly():
    from transformers import Qwen2Tokenizer

    from modeling_maple.testing import QWEN2_VL_SPECIAL_TOKENS, TINY_CHAT_TEMPLATE, tiny_qwen2_vl_config

    tokenizer = Qwen2Tokenizer().train_new_from_iterator(
        ["a red circle", "no entry"] * 4, vocab_size=280, new_special_tokens=QWEN2_VL_SPECIAL_TOKENS
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = tiny_qwen2_vl_config(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    with pytest.raises(ValueError, match="no single token for 'Yes'"):
        answer_token(QwenVLPromptEncoder(config, tokenizer, tiny_image_processor()), "Yes")


def test_unsupported_model_family_bad_prompt_and_batch_size_fail_before_any_work():
    judge_model = tiny_image_text_model()
    with pytest.raises(ValueError, match=r"\{text\}"):
        MLLMJudge(judge_model, tiny_tokenizer(), tiny_image_processor(), prompt="Is this right?")
    for batch_size in (0, -1):  # before the fix: `range() arg 3 must not be zero` when scoring, or empty scores
        with pytest.raises(ValueError, match=rf"batch_size must be at least 1, got {batch_size}"):
            MLLMJudge(judge_model, tiny_tokenizer(), tiny_image_processor(), batch_size=batch_size)
    judge_model.config.model_type = "llava_onevision"
    with pytest.raises(NotImplementedError, match="llava_onevision"):
        MLLMJudge(judge_model, tiny_tokenizer(), tiny_image_processor())


def test_from_pretrained_refuses_bad_settings_before_it_loads(monkeypatch):
    """The model (7B for the paper's judge) loaded first, then the constructor refused the batch size."""
    monkeypatch.setattr("dataset_builders.vlm_inputs.load_vlm", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0"):
        MLLMJudge.from_pretrained("Qwen/Qwen2-VL-7B-Instruct", batch_size=0)
    with pytest.raises(ValueError, match=r"\{text\}"):
        MLLMJudge.from_pretrained("Qwen/Qwen2-VL-7B-Instruct", prompt="Is this right?")


def test_ensemble_averages_its_judges(sharp_judge):
    other = tiny_judge(seed=5)
    ensemble = JudgeEnsemble([sharp_judge, other])
    assert isinstance(ensemble, PreferenceJudge)
    expected = [(a + b) / 2 for a, b in zip(sharp_judge.score(IMAGES, TEXTS), other.score(IMAGES, TEXTS))]
    for got, want in zip(ensemble.score(IMAGES, TEXTS), expected):
        torch.testing.assert_close(got, want)
    expected = [(a + b) / 2 for a, b in zip(sharp_judge.score_images(["two"], [IMAGES]), other.score_images(["two"], [IMAGES]))]
    torch.testing.assert_close(ensemble.score_images(["two"], [IMAGES])[0], expected[0])
    with pytest.raises(ValueError, match=r"^a judge ensemble needs at least one judge$"):
        JudgeEnsemble([])


class _MisshapenJudge(ColourJudge):
    """A judge answering one row short, or each row twice as long."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.name, self.fault = f"misshapen-{fault}", fault

    def _misshapen(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        return rows[:-1] if self.fault == "short" else [torch.cat([row, row]) for row in rows]

    def score(self, images, texts):
        return self._misshapen(super().score(images, texts))

    def score_images(self, texts, images):
        return self._misshapen(super().score_images(texts, images))


@pytest.mark.parametrize("fault, message", [
    ("short", r"ensemble member misshapen-short returned 1 score rows for 2 (images|texts)"),
    ("long", r"ensemble member misshapen-long returned scores of shape \(2,\) for (images|texts)\[0\]; expected \(1,\)"),
])
def test_an_ensemble_refuses_a_member_answer_of_the_wrong_shape_naming_the_member(fault, message):
    """A short answer cut the ensemble's answer short silently (the rows were zipped); a long row was a bare
    "stack expects each tensor to be equal size"."""
    from dataset_builders.scoring import JudgeOutputError

    ensemble = JudgeEnsemble([ColourJudge(), _MisshapenJudge(fault)])
    images = [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")]
    with pytest.raises(JudgeOutputError, match=message):
        ensemble.score(images, [["a red square"], ["a blue square"]])
    with pytest.raises(JudgeOutputError, match=message):
        ensemble.score_images(["a red square", "a blue square"], [[images[0]], [images[1]]])


def test_an_ensemble_scores_images_only_with_judges_that_can():
    """`PreferenceJudge` asks for `score` alone: an ensemble of such judges is a judge, and its `score_images` names
    the member without one instead of failing with an AttributeError."""

    class ScoreOnly:
        def score(self, images, texts):
            return [torch.full((len(candidates),), 0.5) for candidates in texts]

    ensemble = JudgeEnsemble([ScoreOnly(), ScoreOnly()])
    assert isinstance(ensemble, PreferenceJudge) and isinstance(ScoreOnly(), PreferenceJudge)
    assert [scores.tolist() for scores in ensemble.score(IMAGES[:1], [["a", "b"]])] == [[0.5, 0.5]]
    with pytest.raises(TypeError, match=r"^score_images\(\) needs every judge of the ensemble to have it; these have not: ScoreOnly, ScoreOnly$"):
        ensemble.score_images(["a"], [IMAGES[:1]])


def test_ensemble_records_its_members_prompt():
    """Before the fix an ensemble had no `prompt`: the manifest, stats.json and the dataset card
    of a build with repeated --judge said "not recorded"."""
    assert JudgeEnsemble([ColourJudge(), ColourJudge()]).prompt == ColourJudge.prompt
    asker = type("Asker", (ColourJudge,), {"name": "asker", "prompt": 'Is it "{text}"?'})()
    silent = type("Silent", (), {})()
    assert JudgeEnsemble([ColourJudge(), asker, silent]).prompt == (
        f'colour-judge: {ColourJudge.prompt}\nasker: Is it "{{text}}"?\nSilent: not recorded'
    )
    assert JudgeEnsemble([silent]).prompt is None
    assert JudgeEnsemble([ColourJudge(), asker, ColourJudge()]).prompt == (  # two prompts, not one shared
        f'colour-judge: {ColourJudge.prompt}\nasker: Is it "{{text}}"?\ncolour-judge: {ColourJudge.prompt}'
    )


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_newer_qwen_vl_judges_agree_with_each_other_and_the_plain_forward(model_type):
    from transformers import AutoModelForImageTextToText

    from modeling_maple.testing import tiny_mllm_config

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_mllm_config(model_type)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    judge = MLLMJudge(model, tiny_tokenizer(), tiny_image_processor(image_size=32), batch_size=2)
    reused = judge.score(IMAGES, TEXTS)
    for a, b in zip(reused, judge.score(IMAGES, TEXTS, reuse_prefix=False)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    images = judge.prompt_encoder.encode_images(IMAGES[:1])
    ids = judge.prefix_ids(images, 0) + judge.suffix_ids([TEXTS[0][1]])[0]
    with torch.no_grad():
        logits = model(**judge.prompt_encoder.model_inputs([ids], images, padding_side="right")).logits[0, -1]
    reference = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=-1)[0]
    assert abs(reference.item() - reused[0][1].item()) < 1e-5


def test_from_pretrained_loads_a_saved_judge(tmp_path):
    source = tiny_judge(seed=3)
    source.model.save_pretrained(tmp_path)
    source.prompt_encoder.tokenizer.save_pretrained(tmp_path)
    source.prompt_encoder.image_processor.save_pretrained(tmp_path)
    loaded = MLLMJudge.from_pretrained(str(tmp_path), loading_kwargs={"dtype": torch.float32}, batch_size=4)
    assert loaded.name == str(tmp_path)
    for a, b in zip(loaded.score(IMAGES, TEXTS), source.score(IMAGES, TEXTS)):
        torch.testing.assert_close(a, b)
    # Qwen-VL's max_pixels is applied (it lives in size["longest_edge"], not as an attribute) ...
    capped = MLLMJudge.from_pretrained(str(tmp_path), loading_kwargs={"dtype": torch.float32, "image_processor_kwargs": {"max_pixels": 16 * 16}})
    assert capped.prompt_encoder.encode_images(IMAGES[:1]).num_tokens == [4]
    # ... while a setting of another family's processor would be dropped silently by from_pretrained.
    with pytest.raises(ValueError, match=r"max_patches is not a setting of its image processor \(Qwen2VLImageProcessor"):
        MLLMJudge.from_pretrained(str(tmp_path), loading_kwargs={"image_processor_kwargs": {"max_patches": 3}})
    # the image processor's backend is a choice of its own here; a revision would reach its files only
    backend = MLLMJudge.from_pretrained(str(tmp_path), loading_kwargs={"image_processor_kwargs": {"backend": "pil"}})
    assert backend.prompt_encoder.image_processor.backend == "pil"
    with pytest.raises(ValueError, match=r"image_processor_kwargs hold revision: loading arguments"):
        MLLMJudge.from_pretrained(str(tmp_path), loading_kwargs={"image_processor_kwargs": {"revision": "main"}})


def test_from_pretrained_takes_loading_keywords_at_top_level_as_transformers_does(tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    source = tiny_judge(seed=3)
    for part in (source.model, source.prompt_encoder.tokenizer, source.prompt_encoder.image_processor):
        part.save_pretrained(tmp_path)
    loads = []
    load = AutoModelForImageTextToText.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(lambda cls, *a, **kw: loads.append(kw) or load(cls, *a, **kw)))
    judge = MLLMJudge.from_pretrained(str(tmp_path), dtype=torch.bfloat16, device_map="cpu", batch_size=2, name="judge")
    assert loads[-1] == {"dtype": torch.bfloat16, "device_map": "cpu", "token": None}
    assert (judge.model.dtype, judge.batch_size, judge.name) == (torch.bfloat16, 2, "judge")
    capped = MLLMJudge.from_pretrained(str(tmp_path), image_processor_kwargs={"max_pixels": 16 * 16}, model_kwargs={"attn_implementation": "eager"})
    assert capped.prompt_encoder.encode_images(IMAGES[:1]).num_tokens == [4] and loads[-1]["attn_implementation"] == "eager"
    # a transformers argument other than these is not taken for a judge setting, and the error says where it goes
    with pytest.raises(TypeError, match=r"unknown keyword 'attn_implementation'.*go in model_kwargs=\{'attn_implementation': \.\.\.\}"):
        MLLMJudge.from_pretrained(str(tmp_path), attn_implementation="eager")
    with pytest.raises(TypeError, match="MLLMJudge.from_pretrained: dtype given both at top level and in loading_kwargs"):
        MLLMJudge.from_pretrained(str(tmp_path), dtype=torch.float32, loading_kwargs={"dtype": torch.float32})
    with pytest.raises(TypeError, match="device_map given both on its own and in model_kwargs"):
        MLLMJudge.from_pretrained(str(tmp_path), device_map="cpu", model_kwargs={"device_map": "cpu"})


def test_llava_judge_paths_agree_with_each_other_and_the_plain_forward():
    judge = tiny_judge(seed=4, family="llava", batch_size=2)
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.normal_(0.0, 0.3)
    reused = judge.score(IMAGES, TEXTS)
    per_pair = judge.score(IMAGES, TEXTS, reuse_prefix=False)
    for a, b in zip(reused, per_pair):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    encoder = judge.prompt_encoder
    images = encoder.encode_images(IMAGES[:1])
    assert images.num_tokens == [16]  # (16 / 4)^2 patches, CLS dropped
    ids = judge.prefix_ids(images, 0) + judge.suffix_ids([TEXTS[0][1]])[0]
    with torch.no_grad():
        logits = judge.model(**encoder.model_inputs([ids], images, padding_side="right")).logits[0, -1]
    reference = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=-1)[0]
    assert abs(reference.item() - reused[0][1].item()) < 1e-5


def test_internvl_judge_paths_agree_and_match_the_official_processor(monkeypatch):
    """InternVL (the paper's 1-2B judge family): tiled images wrapped in <img> ... </img>; the
    judge's ids and pixels are those `InternVLProcessor` builds, and both scoring paths agree."""
    judge = tiny_judge(seed=4, family="internvl", batch_size=2)
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.normal_(0.0, 0.3)
    for a, b in zip(judge.score(IMAGES, TEXTS), judge.score(IMAGES, TEXTS, reuse_prefix=False)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    official = official_processor("internvl", monkeypatch)
    question = judge.prompt.format(text=TEXTS[1][2])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    for image in IMAGES[:2]:  # 32x32: 4 tiles + thumbnail; 40x24: 2 tiles + thumbnail
        expected = official(text=[official.apply_chat_template(messages, add_generation_prompt=True)], images=[image], return_tensors="pt")
        encoded = judge.prompt_encoder.encode_images([image])
        assert judge.prefix_ids(encoded, 0) + judge.suffix_ids([TEXTS[1][2]])[0] == expected["input_ids"][0].tolist()
        torch.testing.assert_close(encoded.pixel_values, expected["pixel_values"])
    assert judge.prompt_encoder.encode_images(IMAGES[:2]).num_tokens == [20, 12]


def test_llava_judge_prompt_starts_with_the_bos_the_official_processor_adds(monkeypatch):
    """LLaVA-1.5's chat template writes no BOS; `LlavaProcessor` tokenising the rendered prompt adds the tokenizer's
    BOS, which the model was trained with. The judge's ids are the processor's, both scoring paths agree, and a
    template that writes the BOS itself does not get a second one."""
    from dataset_builders.testing import tiny_image_text_model
    from modeling_maple.testing import tiny_mllm_image_processor

    tokenizer = tiny_tokenizer()
    tokenizer.bos_token = "<|video_pad|>"  # a token of the tiny model's vocabulary that LLaVA prompts do not use
    tokenizer.add_bos_token = True
    judge = MLLMJudge(tiny_image_text_model("llava", seed=4), tokenizer, tiny_mllm_image_processor("llava"), batch_size=2)
    official = official_processor("llava", monkeypatch, tokenizer=tokenizer)
    text = TEXTS[1][2]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": judge.prompt.format(text=text)}]}]
    expected = official(text=[official.apply_chat_template(messages, add_generation_prompt=True)], images=[IMAGES[0]], return_tensors="pt")
    ids = judge.prefix_ids(judge.prompt_encoder.encode_images([IMAGES[0]]), 0) + judge.suffix_ids([text])[0]
    assert ids == expected["input_ids"][0].tolist()
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert judge.settings["leading_special_ids"] == [tokenizer.bos_token_id]  # in the builder's manifest
    for a, b in zip(judge.score(IMAGES[:2], TEXTS[:2]), judge.score(IMAGES[:2], TEXTS[:2], reuse_prefix=False)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    own_bos = MLLMJudge(judge.model, tokenizer, judge.prompt_encoder.image_processor, chat_template="<|video_pad|>" + tokenizer.chat_template)
    own_prefix = own_bos.prefix_ids(own_bos.prompt_encoder.encode_images([IMAGES[0]]), 0)
    assert own_prefix == ids[: len(own_prefix)]  # one BOS, the template's


# Images of several sizes (LLaVA-NeXT: 5, 5, 3 and 4 tiles) with candidate lists of several lengths.
MIXED_IMAGES = [IMAGES[0], IMAGES[1], _noise_image(3, (16, 16)), _noise_image(4, (100, 7))]
MIXED_TEXTS = [TEXTS[0], TEXTS[1], ["two", "a red circle"], ["a", "no"]]


def _official_pair_inputs(judge: MLLMJudge, official, image: Image.Image, text: str, **processor_kwargs) -> dict:
    """The inputs the family's own processor `official` builds for the judge's prompt on (image, text) alone."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": judge.prompt.format(text=text)}]}]
    prompt = official.apply_chat_template(messages, add_generation_prompt=True)
    return official(text=[prompt], images=[image], return_tensors="pt", **processor_kwargs)


def _assert_scores_are_the_official_pairs_alone(
    judge: MLLMJudge, official, images=MIXED_IMAGES, texts=MIXED_TEXTS, **processor_kwargs
) -> list[float]:
    """Both scoring paths give every pair of `images` x `texts` (by default `MIXED_IMAGES` x `MIXED_TEXTS`) the P(Yes)
    of the model on the inputs `official` builds for that pair alone (`_official_pair_inputs`); returns those P(Yes)."""
    reused, per_pair = judge.score(images, texts), judge.score(images, texts, reuse_prefix=False)
    expected_alphas = []
    for image, candidates, image_alphas, image_alphas_per_pair in zip(images, texts, reused, per_pair):
        for text, alpha, alpha_per_pair in zip(candidates, image_alphas, image_alphas_per_pair):
            with torch.no_grad():
                logits = judge.model(**_official_pair_inputs(judge, official, image, text, **processor_kwargs)).logits[0, -1]
            expected = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=-1)[0].item()
            assert abs(alpha.item() - expected) < 1e-5 and abs(alpha_per_pair.item() - expected) < 1e-5
            expected_alphas.append(expected)
    return expected_alphas


def test_llava_next_judge_scores_each_pair_as_its_own_processor_and_model_do(monkeypatch):
    """LLaVA-NeXT: each image takes a base view plus a grid of tiles, and image tokens, that follow its size. With images
    of 5, 5, 3 and 4 tiles batched together, both scoring paths give every pair the P(Yes) of that pair alone through
    `LlavaNextProcessor` and `LlavaNextForConditionalGeneration`."""
    judge = _sharpened(tiny_judge(seed=4, family="llava_next", batch_size=2))
    assert judge.prompt_encoder.encode_images(MIXED_IMAGES).num_tokens == [88, 52, 36, 16]
    _assert_scores_are_the_official_pairs_alone(judge, official_processor("llava_next", monkeypatch))
    # a model whose tiles' features are no grid of patches (CLS kept) is refused by name, not at its first forward
    refused = tiny_image_text_model("llava_next", vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full' is not supported"):
        MLLMJudge(refused, judge.prompt_encoder.tokenizer, judge.prompt_encoder.image_processor)


def test_gemma3_judge_scores_each_pair_as_its_own_processor_and_model_do(monkeypatch):
    """Gemma 3: its chat template starts with the BOS and writes `<start_of_image>` where the image goes, which
    `Gemma3Processor` expands into blank lines around the image's soft tokens; its causal mask lets those tokens see one
    another (`token_type_ids`). Both scoring paths give every pair the prompt ids (one BOS) and the P(Yes) of that pair
    alone through `Gemma3Processor` and `Gemma3ForConditionalGeneration`."""
    judge = _sharpened(tiny_judge(seed=4, family="gemma3", batch_size=2))
    official = official_processor("gemma3", monkeypatch)
    # the template wrote the BOS, so `apply_chat_template(tokenize=True)` would add no other
    alphas = _assert_scores_are_the_official_pairs_alone(judge, official, add_special_tokens=False)
    assert max(alphas) - min(alphas) > 0.05  # the pairs are told apart: images and texts are seen
    tokenizer = judge.prompt_encoder.tokenizer
    for image, text in [(MIXED_IMAGES[0], "a red circle"), (MIXED_IMAGES[3], "no")]:
        ids = _official_pair_inputs(judge, official, image, text, add_special_tokens=False)["input_ids"][0].tolist()
        assert judge.prefix_ids(judge.prompt_encoder.encode_images([image]), 0) + judge.suffix_ids([text])[0] == ids
        assert ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<start_of_turn>")]  # one BOS


# Pixtral and Mistral 3 images whose prompts are equally long, at other sizes: rows x (columns + 1) tokens, 2 x (4 + 1)
# and 5 x (1 + 1) of Pixtral's 4-pixel patches, 1 x (3 + 1) and 2 x (1 + 1) of Mistral 3's 8-pixel merged ones
EQUAL_LENGTH_IMAGES = {
    "pixtral": [_noise_image(5, (16, 8)), _noise_image(6, (4, 20))],
    "mistral3": [_noise_image(5, (24, 8)), _noise_image(6, (8, 16))],
}


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_pixtral_judge_scores_each_pair_as_its_own_processor_and_model_do(family, monkeypatch):
    """Pixtral (a `llava` config with a Pixtral tower) and Mistral 3: the chat template starts with the BOS and writes
    `[IMG]` where the image goes, which `PixtralProcessor` expands into the image's rows of `[IMG]`, each ended by
    `[IMG_BREAK]`, the last by `[IMG_END]`; the model reads each image's part of the padded pixels by `image_sizes`.
    Both scoring paths give every pair the prompt ids (one BOS) and the P(Yes) of that pair alone through
    `PixtralProcessor` and the model, images of mixed sizes included, and images of other sizes whose prompts are
    equally long, which share a prefix forward, their pixels padded to the larger."""
    judge = _sharpened(tiny_judge(seed=4, family=family, batch_size=2))
    assert judge.prompt_encoder.family == family
    official = official_processor(family, monkeypatch)
    # the template wrote the BOS, so `apply_chat_template(tokenize=True)` would add no other
    alphas = _assert_scores_are_the_official_pairs_alone(judge, official, add_special_tokens=False)
    assert max(alphas) - min(alphas) > 0.05  # the pairs are told apart: images and texts are seen
    equal_length = EQUAL_LENGTH_IMAGES[family]
    encoded = [judge.prompt_encoder.encode_images([image]) for image in equal_length]
    assert len({len(judge.prefix_ids(images, 0)) for images in encoded}) == 1
    assert encoded[0].pixel_values.shape != encoded[1].pixel_values.shape
    _assert_scores_are_the_official_pairs_alone(judge, official, equal_length, [["a red circle", "no"], ["two"]], add_special_tokens=False)
    tokenizer = judge.prompt_encoder.tokenizer
    for image, text in [(MIXED_IMAGES[0], "a red circle"), (MIXED_IMAGES[3], "no")]:
        ids = _official_pair_inputs(judge, official, image, text, add_special_tokens=False)["input_ids"][0].tolist()
        assert judge.prefix_ids(judge.prompt_encoder.encode_images([image]), 0) + judge.suffix_ids([text])[0] == ids
        assert ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("[INST]")]  # one BOS


def test_a_pixtral_judge_with_pixtral_12bs_own_chat_template_asks_the_question_and_reads_the_answer():
    """pixtral-12b's chat template reads a text part's words under "content" (not "text") and concatenates an
    assistant turn's content with the EOS as a string: the judge failed to start with a bare TypeError (the answer
    rendered as a list of parts) and its prompt would have lost the question. Its prompt and scores are those of the
    same template reading "text" (the tiny Pixtral one)."""
    reference = tiny_judge(seed=4, family="pixtral")
    judge = tiny_judge(seed=4, family="pixtral", chat_template=PIXTRAL_12B_CHAT_TEMPLATE)
    assert (judge.prefix_text, judge.suffix_template) == (reference.prefix_text, reference.suffix_template)
    assert "Answer Yes or No." in judge.suffix_template
    assert (judge.yes_id, judge.no_id) == (reference.yes_id, reference.no_id)
    images, texts = MIXED_IMAGES[:2], [["a red circle", "no"], ["two"]]
    for got, expected in zip(judge.score(images, texts), reference.score(images, texts)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("sliding_window", [8, 32])
def test_gemma3_judge_scores_prompts_longer_than_its_sliding_window_as_its_own_model_does(sliding_window, monkeypatch):
    """Gemma 3's sliding-window layers keep, in the cache its forward builds, only the last `sliding_window - 1`
    tokens. The shared-prefix path failed with a shape error when the prefix was longer than the window (8: the
    23-token prefix), as a long custom prompt makes it under gemma-3's 1024; with the prefix within it and whole
    prompts beyond it (32), both paths must still give each pair the P(Yes) of the model on that pair alone."""
    from transformers import AutoModelForImageTextToText

    from modeling_maple.testing import randomise_zero_initialised_weights, tiny_mllm_config, tiny_mllm_image_processor, tiny_mllm_tokenizer

    config = tiny_mllm_config("gemma3")
    config.text_config.sliding_window = sliding_window
    torch.manual_seed(4)
    model = AutoModelForImageTextToText.from_config(config).eval()
    randomise_zero_initialised_weights(model)
    judge = _sharpened(MLLMJudge(model, tiny_mllm_tokenizer("gemma3"), tiny_mllm_image_processor("gemma3"), batch_size=2))
    assert len(judge.prefix_ids(judge.prompt_encoder.encode_images(MIXED_IMAGES[:1]), 0)) == 23
    _assert_scores_are_the_official_pairs_alone(judge, official_processor("gemma3", monkeypatch), add_special_tokens=False)


def test_internvl_tokenizer_without_image_brackets_is_refused():
    from dataset_builders.testing import tiny_image_text_model
    from dataset_builders.vlm_inputs import prompt_encoder_for

    model = tiny_image_text_model("internvl")
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<IMG_CONTEXT>"]})
    model.config.image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    with pytest.raises(ValueError, match="no '<img>' token"):
        prompt_encoder_for(model.config, tokenizer, None)


@pytest.mark.parametrize("family", ["smolvlm", "idefics3"])
def test_idefics3_family_judge_paths_agree_and_match_the_official_processor(family, monkeypatch):
    """Idefics3 / SmolVLM: images split into a grid of tiles plus a global view, each tile tagged
    <row_r_col_c>; the judge's ids and pixels are those `Idefics3Processor` builds (SmolVLM's prompt
    strings are the same), and both scoring paths and the plain forward agree."""
    judge = tiny_judge(seed=4, family=family, batch_size=2)
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.normal_(0.0, 0.3)
    # 40x24 and 24x40 take equally many image tokens in 2 x 3 and 3 x 2 tiles, but their prompts
    # differ in length (one newline per row): they must not share a prefix batch.
    images = [*IMAGES, _noise_image(3, (24, 40))]
    texts = [*TEXTS, ["a", "bc"]]
    encoded = judge.prompt_encoder.encode_images(images)
    assert encoded.num_tokens[1] == encoded.num_tokens[3] == (2 * 3 + 1) * 4
    reused = judge.score(images, texts)
    for a, b in zip(reused, judge.score(images, texts, reuse_prefix=False)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    single = judge.prompt_encoder.encode_images(images[1:2])
    ids = judge.prefix_ids(single, 0) + judge.suffix_ids([texts[1][1]])[0]
    with torch.no_grad():
        logits = judge.model(**judge.prompt_encoder.model_inputs([ids], single, padding_side="right")).logits[0, -1]
    assert abs(torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=-1)[0].item() - reused[1][1].item()) < 1e-5

    official = official_processor(family, monkeypatch)
    question = judge.prompt.format(text=texts[1][2])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = official.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for image in images[1:]:
        expected = official(text=[prompt], images=[[image]], add_special_tokens=False, return_tensors="pt")
        single = judge.prompt_encoder.encode_images([image])
        assert judge.prefix_ids(single, 0) + judge.suffix_ids([texts[1][2]])[0] == expected["input_ids"][0].tolist()
        torch.testing.assert_close(single.pixel_values, expected["pixel_values"][0])


@pytest.mark.parametrize(
    "call, message",
    [
        # A flat list of texts would be scored character by character ("a", " ", "r", ...).
        (lambda judge: judge.score([IMAGES[0]], ["a red circle"]), r"texts\[0\] is a str .*list"),
        (lambda judge: judge.score(IMAGES[:2], [["fine"], ("ok", 3)]), r"texts\[1\]\[1\] is a int"),
        (lambda judge: judge.score(["a red circle"], [["a red circle"]]), r"images\[0\] is a str .*PIL image"),
        (lambda judge: judge.score(IMAGES[0], [["x"]]), r"images must be a list"),
        (lambda judge: judge.score_images(["t"], [IMAGES[0]]), r"images\[0\] is a Image.*list"),
        (lambda judge: judge.score_images(["t", "u"], [[IMAGES[0]], [IMAGES[1], "x.png"]]), r"images\[1\]\[1\] is a str"),
        (lambda judge: judge.score_images([["t"]], [[IMAGES[0]]]), r"texts\[0\] is a list; expected a str"),
        (lambda judge: judge.score_images("t", [[IMAGES[0]]]), r"texts must be a list"),
    ],
)
def test_malformed_inputs_are_rejected_naming_the_index(sharp_judge, call, message):
    with pytest.raises(ValueError, match=message):
        call(sharp_judge)
    # An ensemble checks too, whatever its members do with bad input.
    with pytest.raises(ValueError, match=message):
        call(JudgeEnsemble([sharp_judge, sharp_judge]))


def test_vision_tokens_come_from_the_processors_shared_helpers(sharp_judge, monkeypatch):
    """Image processing and placeholder expansion are `modeling_maple.processing_maple`'s, the ones
    `MapleProcessor` uses: one implementation, the same ids."""
    from dataset_builders import vlm_inputs
    from modeling_maple import processing_maple

    calls = []

    def spy(name):
        original = getattr(processing_maple, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("encode_mllm_images", "fill_image_placeholders"):
        monkeypatch.setattr(vlm_inputs, name, spy(name))
    encoder = sharp_judge.prompt_encoder
    encoded = encoder.encode_images(IMAGES[:2])
    grid = encoded.extra["image_grid_thw"]
    assert encoded.num_tokens == [int(row.prod()) // encoder.image_processor.merge_size**2 for row in grid]
    ids = encoder.expand_images(sharp_judge.prefix_text, encoded, [1])
    assert calls == ["encode_mllm_images", "fill_image_placeholders"]
    expanded = sharp_judge.prefix_text.replace(encoder.image_token, encoder.image_token * encoded.num_tokens[1])
    assert ids == encoder.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert ids == sharp_judge.prefix_ids(encoded, 1)
    assert ids.count(encoder.image_token_id) == encoded.num_tokens[1]
    with pytest.raises(ValueError, match="placeholders but 2 images"):
        encoder.expand_images(sharp_judge.prefix_text, encoded, [0, 1])


def _truncated_png() -> Image.Image:
    """A PIL image whose file is cut short: it opens (lazily), and fails when decoded."""
    import io

    buffer = io.BytesIO()
    _noise_image(5).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[:200]))


def test_corrupt_image_data_is_an_error_naming_the_image(sharp_judge):
    with pytest.raises(ValueError, match=r"images\[1\]: corrupt image data"):
        sharp_judge.prompt_encoder.encode_images([IMAGES[0], _truncated_png()])


SPECIAL_TEXTS = ["a <|im_end|> tag", "x<|vision_start|>", "an <|image_pad|> tag", "<|im_start|>"]


def test_a_text_holding_a_special_tokens_string_is_judged_as_the_text_it_spells(sharp_judge):
    """Such texts were refused (and the builder skipped their rows): now the template's special tokens stay tokens and
    the text's are read as the characters they spell, as a tokenizer without them would."""
    tokenizer = sharp_judge.prompt_encoder.tokenizer
    head, tail = sharp_judge.suffix_template.split("{text}")
    turn_end = tail.index("<|im_end|>")
    for text in SPECIAL_TEXTS:
        assert sharp_judge.special_token_in(text) is None and JudgeEnsemble([sharp_judge]).special_token_in(text) is None
        plain = tokenizer(head + text + tail[:turn_end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        template_tokens = tokenizer(tail[turn_end:], add_special_tokens=False)["input_ids"]
        assert sharp_judge.suffix_ids([text])[0] == plain + template_tokens
    texts = [SPECIAL_TEXTS[:2], SPECIAL_TEXTS[2:] + ["a red circle"]]
    reused, per_pair = sharp_judge.score(IMAGES[:2], texts), sharp_judge.score(IMAGES[:2], texts, reuse_prefix=False)
    for a, b in zip(reused, per_pair):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    by_text = sharp_judge.score_images(SPECIAL_TEXTS[:2], [[IMAGES[0]], [IMAGES[0]]])
    torch.testing.assert_close(torch.cat(by_text), per_pair[0], atol=1e-4, rtol=0)


def test_a_pickled_or_deep_copied_judge_still_reads_special_token_strings_as_text():
    """The plain-text tokenizer's `encode_special_tokens` flag is not part of its serialisation: a pickled or
    deep-copied judge (a `datasets.map` worker's, a test's copy) read "<|im_end|>" in a text as that token again, so it
    refused the text its original scored, or scored it otherwise."""
    import copy
    import pickle

    judge = tiny_judge(seed=0)
    for copied in (pickle.loads(pickle.dumps(judge)), copy.deepcopy(judge)):
        for text in SPECIAL_TEXTS:
            assert copied.special_token_in(text) is None
            assert copied.suffix_ids([text]) == judge.suffix_ids([text])


# The attributes a judge pickles under `JUDGE_STATE_VERSION` 1. A judge that gains or loses one is another state: raise
# the version with this set, so that a judge pickled before is refused rather than restored without it.
JUDGE_STATE_ATTRIBUTES = {
    1: {"_cache_keyword", "_empty_suffix_ids", "_offloaded_answer_rows", "_plain_suffix_runs", "_plain_text_tokenizer",
        "_prefix_ids_by_image_text", "_prefix_length_by_image_size", "_special_ids", "_special_tokens", "_suffix_lead",
        "_suffix_parts", "answer_lead", "batch_size", "context_length", "model", "name", "no_id", "prefix_text",
        "prompt", "prompt_encoder", "suffix_template", "yes_id"},
}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_the_judge_state_version_is_raised_with_its_attributes(family):
    """Nothing told that `JUDGE_STATE_VERSION` had to be raised when the judge gained an attribute (a review's
    remark): this fails until the version and `JUDGE_STATE_ATTRIBUTES` are raised together."""
    judge = tiny_judge(seed=0, family=family)
    assert set(vars(judge)) == JUDGE_STATE_ATTRIBUTES.get(judge_module.JUDGE_STATE_VERSION), (
        "the judge's attributes changed: raise JUDGE_STATE_VERSION and record its attributes in JUDGE_STATE_ATTRIBUTES"
    )


@pytest.mark.parametrize(
    "lacking",
    [
        ("_empty_suffix_ids",),  # pickled before 93e7a7f: unpickled, it failed in its first `score`
        ("_plain_text_tokenizer", "_special_ids", "context_length", "_prefix_length_by_image_size",
         "_empty_suffix_ids"),  # pickled before 2e4da6b: unpickling it failed
    ],
    ids=["a cache", "the text rules"],
)
def test_a_judge_pickled_by_an_older_judge_is_refused_with_advice_to_build_it_again(monkeypatch, lacking):
    """A judge pickled before `__setstate__` knew its attributes lacked some this one reads: unpickling one without the
    plain-text tokenizer failed in `__setstate__` with a bare AttributeError, and one without a cache later, in its
    first `score`. Filling in the text rules would change its scores (it skipped the rows of texts holding a special
    token's string and did not cut long texts), so it is refused, naming what to do."""
    import pickle

    judge = tiny_judge(seed=0)
    # as an older judge pickled itself: its attributes then, and no state version
    monkeypatch.setattr(
        MLLMJudge, "__getstate__", lambda self: {name: value for name, value in vars(self).items() if name not in lacking}
    )
    pickled = pickle.dumps(judge)
    monkeypatch.undo()
    with pytest.raises(
        pickle.UnpicklingError,
        match=r"^this MLLMJudge was pickled by another version of dataset_builders \(judge state version none, pickled "
        rf"before judges recorded one; this one restores {judge_module.JUDGE_STATE_VERSION}\).*Build the judge again "
        r"\(MLLMJudge\.from_pretrained",
    ):
        pickle.loads(pickled)
    assert pickle.loads(pickle.dumps(judge)).suffix_ids(SPECIAL_TEXTS) == judge.suffix_ids(SPECIAL_TEXTS)


@pytest.mark.parametrize("legacy_normalizer", [False, True])
def test_a_llama_judge_reads_a_bos_string_in_a_caption_as_text(legacy_normalizer):
    """ "the <s> key" was refused for Llama tokenizers, where "<s>" is the BOS; the builder skipped the row."""
    text = "the <s> key"
    prompt = judge_module.DEFAULT_JUDGE_PROMPT if not legacy_normalizer else '"{text}"? Does the image align with the text? Answer Yes or No.'
    judge = _llama_judge(prompt, ["a red circle", text], legacy_normalizer=legacy_normalizer)
    tokenizer = judge.prompt_encoder.tokenizer
    assert judge.special_token_in(text) is None
    ids = judge.suffix_ids([text])[0]
    assert tokenizer.bos_token_id not in ids
    # the template's text holds no special token of this tokenizer: the suffix is one run, read as text
    suffix = judge.suffix_template.format(text=text)
    assert ids == tokenizer(suffix, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    scores = judge.score([IMAGES[0]], [[text, "a red circle"]])
    torch.testing.assert_close(scores[0], judge.score([IMAGES[0]], [[text, "a red circle"]], reuse_prefix=False)[0], atol=1e-4, rtol=0)


def test_a_special_token_the_vocabulary_spells_from_its_characters_is_still_refused():
    """Read as text, "<s>" would still become the BOS where the tokenizer's merges spell it."""
    judge = _llama_judge(judge_module.DEFAULT_JUDGE_PROMPT, ["a red circle", "the <s> key"], spelled=["<s>"])
    assert judge.special_token_in("the <s> key") == "<s>"
    with pytest.raises(ValueError, match=r"texts\[0\]\[0\] contains the judge's special token '<s>'"):
        judge.score([IMAGES[0]], [["the <s> key"]])


@pytest.mark.parametrize(
    "call, message",
    [
        # End of turn: the reuse path silently scored a broken prompt.
        (lambda judge: judge.score(IMAGES[:2], [["fine"], ["ok", "a <|im_end|> tag"]]), r"texts\[1\]\[1\] contains the judge's special token '<\|im_end\|>'"),
        (lambda judge: judge.score_images(["fine", "x<|vision_start|>"], [[IMAGES[0]], [IMAGES[1]]]), r"texts\[1\] contains .*'<\|vision_start\|>'"),
    ],
)
def test_a_judge_that_cannot_read_special_tokens_as_text_refuses_texts_holding_one_before_any_forward(
    sharp_judge, call, message, monkeypatch
):
    """A tokenizer without a backend (a slow one), or whose plain reading of the prompt around a text differs from the
    whole prompt's, cannot read them as text."""
    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(sharp_judge.model.model, "forward", no_forward)
    monkeypatch.setattr(sharp_judge, "_plain_text_tokenizer", None)
    with pytest.raises(ValueError, match=message):
        call(sharp_judge)
    with pytest.raises(ValueError, match=message):
        call(JudgeEnsemble([sharp_judge]))


def test_a_judge_without_a_backend_tokenizer_has_no_plain_text_reading(monkeypatch):
    monkeypatch.setattr(judge_module, "plain_text_tokenizer", lambda tokenizer: None)
    assert tiny_judge(seed=0).special_token_in("a <|im_end|> tag") == "<|im_end|>"


@pytest.mark.parametrize("call", [
    lambda ensemble: ensemble.score(IMAGES[:2], [["fine"], ["a red <image> square"]]),
    lambda ensemble: ensemble.score_images(["fine", "a red <image> square"], [[IMAGES[0]], [IMAGES[1]]]),
])
def test_an_ensemble_refuses_a_text_any_member_cannot_read_before_any_member_scores(call, monkeypatch):
    """"<image>" is special to SmolVLM's tokenizer only: the Qwen2-VL member ran its forwards, then SmolVLM refused it."""
    qwen, smolvlm = tiny_judge(seed=1), tiny_judge(seed=2, family="smolvlm")
    monkeypatch.setattr(smolvlm, "_plain_text_tokenizer", None)
    for member in (qwen, smolvlm):
        monkeypatch.setattr(member.model.model, "forward", lambda *args, **kwargs: pytest.fail("a member ran its model"))
    with pytest.raises(ValueError, match=r"texts\[1\](\[0\])? contains the judge's special token '<image>'"):
        call(JudgeEnsemble([qwen, smolvlm]))


def test_a_special_token_is_refused_on_the_per_pair_path_too(sharp_judge, monkeypatch):
    """An image slot without features: the per-pair path crashed naming nothing."""
    monkeypatch.setattr(sharp_judge.model.model, "forward", lambda *args, **kwargs: pytest.fail("the model ran"))
    monkeypatch.setattr(sharp_judge, "_plain_text_tokenizer", None)
    with pytest.raises(ValueError, match=r"texts\[0\]\[0\] contains .*'<\|image_pad\|>'"):
        sharp_judge.score(IMAGES[:1], [["an <|image_pad|> tag"]], reuse_prefix=False)


def test_smolvlm_judge_reads_its_literal_image_placeholder_in_a_text_as_text(monkeypatch):
    judge = tiny_judge(seed=0, family="smolvlm")
    assert judge.special_token_in("a cat") is None
    assert judge.special_token_in("an <image> and a <row_1_col_1>") is None
    image_token = judge.prompt_encoder.image_token_id
    assert judge.suffix_ids(["an <image> here"])[0].count(image_token) == 0
    assert judge.score([IMAGES[0]], [["an <image> here"]])[0].shape == (1,)
    monkeypatch.setattr(judge, "_plain_text_tokenizer", None)
    assert judge.special_token_in("an <image> and a <row_1_col_1>") == "<image>"
    assert JudgeEnsemble([judge]).special_token_in("a <row_1_col_1> tag") == "<row_1_col_1>"
    with pytest.raises(ValueError, match=r"texts\[0\]\[0\] contains the judge's special token '<image>'"):
        judge.score([IMAGES[0]], [["an <image> here"]])


def test_the_special_token_found_in_a_text_is_named_whole_and_includes_an_unmarked_image_placeholder():
    """The pattern tries longer tokens first, so a token that begins with another is named whole; and the image
    placeholder counts even where the tokenizer does not mark it special (an added token is still read as one token,
    which claims image features that do not exist)."""
    from types import SimpleNamespace

    from dataset_builders.judge import special_token_pattern

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<box>", "<box>_end"]})
    tokenizer.add_tokens(["<IMG_CONTEXT>"])  # not special
    pattern = special_token_pattern(SimpleNamespace(tokenizer=tokenizer, image_token="<IMG_CONTEXT>"))
    assert pattern.search("a cat <box>_end here").group() == "<box>_end"
    assert pattern.search("a cat <box> here").group() == "<box>"
    assert pattern.search("an <IMG_CONTEXT> tag").group() == "<IMG_CONTEXT>"


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_weights_digest_does_not_depend_on_offloading(offload, tmp_path):
    """A judge spread by a device map keeps offloaded weights on the meta device, their values in accelerate's
    offload hooks: a build resumed on a machine with more or less GPU memory must find the same digest."""
    from accelerate import cpu_offload, disk_offload

    from dataset_builders.vlm_inputs import weights_digest

    model = tiny_image_text_model("qwen2_vl", seed=0)
    expected = weights_digest(model)
    if offload == "cpu":
        cpu_offload(model, execution_device="cpu")
    else:
        disk_offload(model, offload_dir=str(tmp_path), execution_device="cpu")
    assert all(tensor.device.type == "meta" for tensor in model.state_dict().values())
    assert weights_digest(model) == expected


def test_settings_hold_what_changes_the_scores():
    """The builder's manifest records them (with the name), so a resumed build cannot mix shards of
    judges that differ in resolution, dtype, prompt or chat template."""
    import json

    small, large = tiny_judge(image_size=32), tiny_judge(image_size=64)
    assert set(small.settings) == {"prompt", "answer_logits", "answer_tokens", "special_token_strings", "context_length",
                                   "weights", "chat_template", "leading_special_ids", "dtype", "image_processor"}
    assert small.settings["answer_tokens"] == ["Yes", "No"]
    assert small.settings["special_token_strings"] == "read as text" and small.settings["context_length"] == 128
    # the same weights give the same digest; one changed value, as in a model retrained in place, another
    assert small.settings["weights"] == tiny_judge(image_size=32).settings["weights"] == large.settings["weights"]
    retrained = tiny_judge(image_size=32)
    with torch.no_grad():
        next(retrained.model.parameters()).view(-1)[0] += 1.0
    assert retrained.settings["weights"] != small.settings["weights"]
    assert small.settings["image_processor"]["size"] != large.settings["image_processor"]["size"]
    assert small.settings["prompt"] == small.prompt and small.settings["dtype"] == "torch.float32"
    assert small.settings["chat_template"] == small.prompt_encoder.chat_template
    small.model.to(torch.bfloat16)
    assert small.settings["dtype"] == "torch.bfloat16"
    assert json.loads(json.dumps(small.settings)) == small.settings
    assert JudgeEnsemble([small, large]).settings == {"judges": [small.settings, large.settings]}


def test_settings_record_which_texts_are_scored_and_the_context_they_are_cut_to():
    """Texts holding a special token's string were refused (their rows skipped) and long texts ran past the context;
    now both are scored, the latter cut to `context_length`: a work dir begun under the old rules, or with another
    `model_max_length`, must not resume under these. A judge that still refuses such texts records nothing, as
    before."""
    judge = tiny_judge()
    assert judge.settings["special_token_strings"] == "read as text" and judge.settings["context_length"] == 128
    encoder = judge.prompt_encoder
    encoder.tokenizer.model_max_length = 96
    assert MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor).settings["context_length"] == 96
    judge._plain_text_tokenizer, judge.context_length = None, None  # a slow tokenizer, and neither limit set
    assert "special_token_strings" not in judge.settings and "context_length" not in judge.settings


def _llama_judge(prompt: str, texts: list[str], *, legacy_normalizer: bool = False, spelled: Sequence[str] = ()) -> MLLMJudge:
    """A tiny LLaVA judge asking `prompt`, on a Llama tokenizer whose vocabulary spells the prompt and `texts`:
    Metaspace with prepend_scheme="first", as transformers 5 builds Llama tokenizers, or with `legacy_normalizer` the
    normalizer of Llama 2-era tokenizer.json files, which prepends "▁" to every piece between special tokens. Its
    merges spell "Yes", "No" and the words of `spelled` from their characters."""
    from tokenizers import normalizers
    from transformers import AutoModelForImageTextToText, LlamaTokenizer

    from modeling_maple.testing import tiny_mllm_config, tiny_mllm_image_processor

    corpus = "USER: ASSISTANT: Does the image align with the text " + " ".join(texts) + '"? Answer Yes or No.'
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    for character in sorted(set(corpus.replace(" ", "▁")) | {"▁"}):
        vocab.setdefault(character, len(vocab))
    merges = []
    for word in ("▁Yes", "▁No", *spelled):  # one token each ("Yes", "No" as the judge needs)
        piece = word[:2]
        merges.append((word[0], word[1]))
        vocab.setdefault(piece, len(vocab))
        for character in word[2:]:
            merges.append((piece, character))
            piece += character
            vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges)
    if legacy_normalizer:
        tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.backend_tokenizer.pre_tokenizer = None
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image_pad|>"], "pad_token": "<pad>"})
    tokenizer.chat_template = tiny_tokenizer().chat_template  # LLaVA-1.5's, as the tiny LLaVA uses
    config = tiny_mllm_config("llava", image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    config.text_config.vocab_size = len(tokenizer)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(4)
    return MLLMJudge(AutoModelForImageTextToText.from_config(config).eval(), tokenizer, tiny_mllm_image_processor("llava"),
                     batch_size=2, prompt=prompt)


def _assert_prompt_ids_are_the_official_processors(judge: MLLMJudge, texts: list[str], monkeypatch) -> None:
    """Shared prefix + suffix ids of each text equal the ids `LlavaProcessor` gives the whole prompt."""
    tokenizer = judge.prompt_encoder.tokenizer
    official = official_processor("llava", monkeypatch, tokenizer=tokenizer)
    encoded = judge.prompt_encoder.encode_images([IMAGES[0]])
    for text in texts:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": judge.prompt.format(text=text)}]}]
        expected = official(text=[official.apply_chat_template(messages, add_generation_prompt=True)], images=[IMAGES[0]],
                            return_tensors="pt")["input_ids"][0].tolist()
        assert judge.prefix_ids(encoded, 0) + judge.suffix_ids([text])[0] == expected


def test_a_suffix_after_the_image_token_is_tokenised_as_in_the_whole_prompt(monkeypatch):
    """Llama tokenizers (transformers 5: Metaspace, prepend_scheme="first") mark the start of a string with "▁". A
    prompt the space cut cannot split falls back to a cut right after the image token; its suffix, tokenised alone,
    gained a "▁" the whole prompt does not have, so the judge scored a prompt the model was never given."""
    texts = ["a red circle", "two blue squares"]
    judge = _llama_judge('"{text}"? Does the image align with the text? Answer Yes or No.', texts)
    assert judge.prefix_text.endswith("<|image_pad|>")  # the fallback cut
    _assert_prompt_ids_are_the_official_processors(judge, texts, monkeypatch)


def test_a_space_cut_that_tokenises_otherwise_than_the_whole_prompt_is_not_used(monkeypatch):
    """A tokenizer that prepends "▁" to every piece it reads tokenises the suffix after the question's last space, alone,
    as "▁▁" + text where the whole prompt has one "▁": the judge must find that out and cut after the image token
    instead (where the whole prompt starts a piece too), or every pair is scored on a prompt with a stray token."""
    texts = ["a red circle", "two blue squares"]
    judge = _llama_judge(judge_module.DEFAULT_JUDGE_PROMPT, texts, legacy_normalizer=True)
    assert judge.prefix_text.endswith("<|image_pad|>")
    _assert_prompt_ids_are_the_official_processors(judge, texts, monkeypatch)


def _prompt_encoder(tokenizer=None, **kwargs):
    """The tiny Qwen2-VL prompt encoder, on `tokenizer` (default: the tiny one)."""
    from dataset_builders.vlm_inputs import prompt_encoder_for
    from modeling_maple.testing import tiny_qwen2_vl_config

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = tiny_qwen2_vl_config(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    return prompt_encoder_for(config, tokenizer, tiny_image_processor(), **kwargs)


def test_a_tokenizer_without_a_chat_template_needs_one_passed():
    from modeling_maple.testing import TINY_CHAT_TEMPLATE

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=r"the tokenizer has no chat template; pass chat_template=\.\.\. explicitly"):
        _prompt_encoder(tokenizer)
    assert _prompt_encoder(tokenizer, chat_template=TINY_CHAT_TEMPLATE).chat_template == TINY_CHAT_TEMPLATE


def test_an_image_token_id_the_tokenizer_lacks_is_refused_clearly():
    from dataset_builders.vlm_inputs import prompt_encoder_for
    from modeling_maple.testing import tiny_qwen2_vl_config

    tokenizer = tiny_tokenizer()
    beyond = len(tokenizer) + 7
    with pytest.raises(ValueError, match=rf"the tokenizer has no token for the model's image token id {beyond}"):
        prompt_encoder_for(tiny_qwen2_vl_config(image_token_id=beyond), tokenizer, tiny_image_processor())


def test_render_ends_with_the_generation_prompt_only_when_asked():
    encoder = _prompt_encoder()
    messages = [{"role": "user", "content": [{"type": "text", "text": "a red circle"}]}]
    answering = encoder.render(messages, add_generation_prompt=True)
    finished = encoder.render(messages, add_generation_prompt=False)
    assert finished.endswith("<|im_end|>\n") and answering == finished + "<|im_start|>assistant\n"


def test_pad_fills_with_the_tokenizers_pad_token_on_the_side_asked():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = "<|video_pad|>"  # the tiny pad is id 0; Qwen2-VL's (<|endoftext|>) is not
    pad = tokenizer.pad_token_id
    assert pad not in (None, 0)
    encoder = _prompt_encoder(tokenizer)
    ids, mask = encoder.pad([[5, 6, 7], [8]], padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = encoder.pad([[5, 6, 7], [8]], padding_side="right")
    assert ids.tolist() == [[5, 6, 7], [8, pad, pad]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("template, leading", [("$A <|endoftext|>", []), ("<|im_start|> $A <|endoftext|>", ["<|im_start|>"])])
def test_the_leading_special_ids_leave_out_what_a_tokenizer_puts_after_a_text(template, leading):
    """A prompt prefix must not end the sequence: a tokenizer that appends an EOS (as some Llama tokenizers are set
    to) contributes only what it puts before a text."""
    from tokenizers import processors

    tokenizer = tiny_tokenizer()
    special = [(token, tokenizer.convert_tokens_to_ids(token)) for token in ("<|endoftext|>", "<|im_start|>")]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=special)
    assert tokenizer("a")["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert _prompt_encoder(tokenizer).leading_special_ids == tokenizer.convert_tokens_to_ids(leading)


def _digest_of(**tensors: torch.Tensor) -> str:
    from dataset_builders.vlm_inputs import weights_digest

    module = torch.nn.Module()
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor)
    return weights_digest(module)


def test_weights_digest_tells_apart_weights_of_equal_bytes_under_other_names_shapes_or_dtypes():
    values = torch.arange(6, dtype=torch.float16)
    digest = _digest_of(weight=values.reshape(2, 3))
    assert digest == _digest_of(weight=values.reshape(2, 3).clone())
    assert digest != _digest_of(bias=values.reshape(2, 3))
    assert digest != _digest_of(weight=values.reshape(3, 2))
    assert digest != _digest_of(weight=values.reshape(2, 3).view(torch.bfloat16))


def test_weights_digest_hashes_at_most_values_per_tensor_values_of_each_tensor(monkeypatch):
    """A 72B model's digest must stay cheap: at most `values_per_tensor` evenly strided values of a tensor are read."""
    import hashlib
    from types import SimpleNamespace

    from dataset_builders import vlm_inputs

    hashed = []

    class Recording:
        def __init__(self):
            self.inner = hashlib.sha256()

        def update(self, data):
            hashed.append(data)
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(vlm_inputs, "hashlib", SimpleNamespace(sha256=Recording))
    module = torch.nn.Module()
    module.register_buffer("weight", torch.arange(7, dtype=torch.float32))
    vlm_inputs.weights_digest(module, values_per_tensor=4)
    assert hashed[1] == torch.arange(4, dtype=torch.float32).numpy().tobytes()


def test_weights_digest_of_a_meta_tensor_without_an_offload_hook_still_covers_its_name_and_shape():
    """A meta tensor no offload hook holds has no values to read; the digest still records it."""
    assert _digest_of(weight=torch.empty(2, 3, device="meta")) != _digest_of(weight=torch.empty(3, 2, device="meta"))


def test_an_offloaded_tensor_is_looked_up_in_each_hook_of_a_sequential_hook():
    from types import SimpleNamespace

    values = torch.ones(2)
    module = torch.nn.Module()
    module._hf_hook = SimpleNamespace(hooks=[SimpleNamespace(), SimpleNamespace(weights_map={}), SimpleNamespace(weights_map={"weight": values})])
    assert offloaded_tensor(module, "weight") is values
    assert offloaded_tensor(module, "bias") is None
    assert offloaded_tensor(torch.nn.Module(), "weight") is None


def test_to_model_gives_the_pixels_the_models_dtype_and_leaves_the_ids_integers():
    """A bf16 judge or captioner gets bf16 pixels: float32 ones would double the pixels' memory (some vision towers
    cast them themselves, so a missing cast does not show in the scores)."""
    from dataset_builders.vlm_inputs import to_model

    model = tiny_image_text_model("qwen2_vl", seed=0).to(torch.bfloat16)
    inputs = {"input_ids": torch.ones(1, 2, dtype=torch.long), "pixel_values": torch.zeros(4, 8)}
    moved = to_model(inputs, model)
    assert (moved["pixel_values"].dtype, moved["input_ids"].dtype) == (torch.bfloat16, torch.long)


def _saved_judge_folder(tmp_path, source=None):
    source = source or tiny_judge(seed=3)
    for part in (source.model, source.prompt_encoder.tokenizer, source.prompt_encoder.image_processor):
        part.save_pretrained(tmp_path)
    return str(tmp_path)


def test_load_vlm_refuses_an_unsupported_family_from_its_config_before_loading_anything_else(tmp_path, monkeypatch):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, BertConfig

    from dataset_builders.vlm_inputs import load_vlm

    BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4).save_pretrained(tmp_path)
    for auto in (AutoImageProcessor, AutoTokenizer, AutoModelForImageTextToText):
        monkeypatch.setattr(auto, "from_pretrained", lambda *args, **kwargs: pytest.fail("more than the config was loaded"))
    with pytest.raises(NotImplementedError, match=r"model type 'bert' is not supported yet; supported: qwen2_vl"):
        load_vlm(str(tmp_path))


def test_a_chat_template_kept_only_for_the_processor_is_used_and_a_missing_one_is_refused_before_the_weights(tmp_path, monkeypatch):
    """The legacy chat_template.json is `AutoProcessor`'s, not the tokenizer's: `from_pretrained` loaded every weight,
    then failed with "the tokenizer has no chat template", with no way round it from the CLI."""
    import json

    from transformers import AutoModelForImageTextToText

    source = tiny_judge(seed=3)
    template = source.prompt_encoder.chat_template
    source.prompt_encoder.tokenizer.chat_template = None
    folder = _saved_judge_folder(tmp_path, source)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    judge = MLLMJudge.from_pretrained(folder)
    assert judge.prompt_encoder.chat_template == template
    assert judge.settings == source.settings  # the same prompts and answer tokens as with the template in the tokenizer

    # beside a text-only template of the tokenizer (LlamaFactory exports LLaVA so), the processor's is the one
    # `AutoProcessor` renders with; the tokenizer's had been taken, and failed on the image (found by a review)
    text_only = "{% for message in messages %}USER: {{ message['content'] }} ASSISTANT:{% endfor %}"
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": text_only}))
    assert MLLMJudge.from_pretrained(folder).prompt_encoder.chat_template == template

    (tmp_path / "chat_template.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", lambda *args, **kwargs: pytest.fail("the weights were loaded"))
    with pytest.raises(ValueError, match=r"has no chat template \(neither in its tokenizer nor in chat_template.jinja or chat_template.json\)"):
        MLLMJudge.from_pretrained(folder)
    monkeypatch.undo()
    assert MLLMJudge.from_pretrained(folder, chat_template=template).prompt_encoder.chat_template == template


def test_load_vlm_moves_the_model_to_its_device_unless_a_device_map_placed_it(tmp_path):
    """A device map spreads a 72B model over several GPUs; moving it to `device` afterwards would undo that."""
    from dataset_builders.vlm_inputs import load_vlm

    folder = _saved_judge_folder(tmp_path)
    assert load_vlm(folder, device="meta").model.device.type == "meta"
    assert load_vlm(folder, device="meta", model_kwargs={"device_map": "cpu"}).model.device.type == "cpu"


def test_a_token_is_taken_at_top_level_for_every_file_and_refused_in_model_kwargs(tmp_path, monkeypatch):
    """`token=` reads the config, image processor, tokenizer and weights alike; in model_kwargs it would reach the
    weights only."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    source = tiny_judge(seed=3)
    for part in (source.model, source.prompt_encoder.tokenizer, source.prompt_encoder.image_processor):
        part.save_pretrained(tmp_path)
    tokens = {}

    def recording(load):
        def from_pretrained(cls, *args, **kwargs):
            tokens[cls.__name__] = kwargs.get("token")
            return load(cls, *args, **kwargs)
        return classmethod(from_pretrained)

    for loader in (AutoConfig, AutoImageProcessor, AutoTokenizer, AutoModelForImageTextToText):
        monkeypatch.setattr(loader, "from_pretrained", recording(loader.from_pretrained.__func__))
    MLLMJudge.from_pretrained(str(tmp_path), token="hf_reader")
    assert tokens == dict.fromkeys(["AutoConfig", "AutoImageProcessor", "AutoTokenizer", "AutoModelForImageTextToText"], "hf_reader")
    with pytest.raises(TypeError, match=r"'token' in model_kwargs would reach the model's weights only; pass token=\.\.\. to from_pretrained itself"):
        MLLMJudge.from_pretrained(str(tmp_path), model_kwargs={"token": "hf_reader"})


@pytest.mark.parametrize("keyword", ["cache_dir", "subfolder", "local_files_only", "force_download", "trust_remote_code"])
def test_every_file_selecting_keyword_is_refused_at_top_level_and_in_model_kwargs(keyword, monkeypatch):
    """Each of them, like `revision`, would reach the weights' from_pretrained only, pairing one snapshot's weights
    with another's tokenizer and image processor."""
    monkeypatch.setattr("dataset_builders.vlm_inputs.load_vlm", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    message = rf"MLLMJudge.from_pretrained: '{keyword}' would reach the model's weights only"
    for kwargs in ({keyword: True}, {"model_kwargs": {keyword: True}}):
        with pytest.raises(TypeError, match=message):
            MLLMJudge.from_pretrained("org/judge", **kwargs)
