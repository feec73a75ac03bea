"""The README's examples run as written and print what they say."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first python code block under the README heading ``heading``."""
    return re.search(rf"## {heading}\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)


@pytest.mark.slow  # the example as written: CEBRA 500 iterations, 10 epochs of 3 decoders
def test_thirty_second_example_prints_an_image_score_beside_score(capsys):
    exec(compile(python_block("In 30 seconds"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    ssim = re.search(r"^SSIM (-?\d+\.\d{3})$", printed, re.M)
    score = re.search(r"^score (-?\d+\.\d{3})$", printed, re.M)
    assert ssim and score, printed
    assert -1 <= float(ssim[1]) <= 1 and float(score[1]) <= 1
