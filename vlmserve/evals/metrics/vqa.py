"""VQA accuracy (VQAv2, TextVQA), re-implemented from the official GT-Vision-Lab/VQA `vqaEval.py`.

The official normalisation has quirks that move scores by tenths of a point, so they are kept on purpose
(research/evals.md §1): a prediction is normalised only when the human answers disagree, a period is
deleted whenever no digit follows it ("2." -> "2"), and the contractions table restores apostrophes only
for the words it lists.
"""

import re

# Punctuation the official code deletes or turns into a space; the apostrophe and the colon are kept.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its look-behind is malformed (it is a look-ahead for the
# text "<=" followed by a digit, which can never precede a period), so it deletes every period that is not
# followed by a digit. We write what it does.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# The words whose missing apostrophes the official table restores. A word with one apostrophe is looked up
# without it ("dont" -> "don't"); a word with several is looked up with any single one missing
# ("couldnt've" and "couldn'tve" -> "couldn't've", but "couldntve" is left alone, as officially).
_CONTRACTED = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
    he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
    mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
    shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
    something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
    they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
    where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
    wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _missing_one_apostrophe(word: str) -> list[str]:
    positions = [i for i, char in enumerate(word) if char == "'"]
    if len(positions) == 1:
        return [word.replace("'", "")]
    return [word[:i] + word[i + 1:] for i in positions]


_CONTRACTIONS = {key: word for word in _CONTRACTED for key in _missing_one_apostrophe(word)}
# The official table also maps "somebody'd" the wrong way round; kept, since it changes what matches.
# Its entries with a capital "I" (e.g. "Im") and its identity entries ("let's") can never change a
# lowercased word, so they are left out.
_CONTRACTIONS["somebody'd"] = "somebodyd"


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """A mark touching a space, or any mark in a text holding a digit-comma-digit, is deleted; any other
    mark becomes a space ("left-hand" -> "left hand", "100,978 people" -> "100978 people")."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # the test reads the input text, the replacement acts on the running output, as officially
        delete = delete_all or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA answer normalisation: newlines and tabs to spaces and strip, then punctuation
    handling, then lowercase, number words "none"/"zero".."ten" to digits, articles removed and missing
    apostrophes restored."""
    return _process_digit_article(_process_punctuation(_clean(answer)))


def vqa_accuracy(prediction: str, answers: list[str], *, always_normalize: bool = False) -> float:
    """VQA accuracy of one prediction against the human answers, in [0, 1].

    Each annotator is left out in turn; the prediction scores min(1, #remaining annotators who gave it / 3)
    against the rest, and the scores are averaged. With ten answers and m of them equal to the prediction
    this is 0, 0.3, 0.6, 0.9 and 1.0 for m = 0, 1, 2, 3 and >= 4.

    Official rule: the prediction and the answers are normalised (`normalize_vqa_answer`) only when the
    answers are not all identical; when they are unanimous all strings are only stripped and compared raw,
    so "Black." scores 0 against ten "black" (the maintainers' choice, to leave OCR-like answers alone;
    GT-Vision-Lab/VQA#14). `always_normalize=True` gives the lmms-eval/VLMEvalKit variant that always
    normalises; record which one a score used.

    Fewer than ten answers: the same leave-one-out average over however many there are, which is what the
    official loop computes on such a list; so with n < 4 answers a perfect prediction scores (n - 1) / 3.
    A single answer leaves nobody to compare against, so it is scored by exact match (1.0 or 0.0) after
    the same normalisation rule. No answers at all is a ValueError.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer, got none")
    prediction, answers = _clean(prediction), [_clean(answer) for answer in answers]
    if always_normalize or len(set(answers)) > 1:
        prediction = normalize_vqa_answer(prediction)
        answers = [normalize_vqa_answer(answer) for answer in answers]
    if len(answers) == 1:
        return float(prediction == answers[0])
    num_matching = sum(answer == prediction for answer in answers)
    # leaving annotator i out removes one match exactly when annotator i matched
    return sum(min(1.0, (num_matching - (answer == prediction)) / 3) for answer in answers) / len(answers)
