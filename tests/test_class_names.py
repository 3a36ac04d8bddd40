"""class_names.json: read back as written; a damaged file is named in one line, not a traceback."""
import pytest

from vit.class_names import read_class_names, write_class_names
from vit.errors import UserError


def test_names_read_back_and_a_wider_head_stays_numbered(tmp_path):
  write_class_names(str(tmp_path), ['a', 'b'])
  assert read_class_names(str(tmp_path), 2) == ['a', 'b']
  assert read_class_names(str(tmp_path), 5) is None  # More outputs than named classes.
  assert read_class_names(str(tmp_path / 'none'), 2) is None


@pytest.mark.parametrize('text, problem', [
    ('["a", ', 'not valid JSON'), (b'\xff\xfe', 'not valid JSON'),
    ('{"a": 1}', 'not a JSON list of strings'), ('["a", 2]', 'not a JSON list of strings')])
def test_a_damaged_file_is_named(tmp_path, text, problem):
  path = tmp_path / 'class_names.json'
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  with pytest.raises(UserError, match=f'^{path}: {problem}') as e:
    read_class_names(str(tmp_path), 2)
  assert '\n' not in str(e.value)


def test_more_names_than_outputs_is_named(tmp_path):
  write_class_names(str(tmp_path), ['a', 'b', 'c'])
  with pytest.raises(UserError, match=f'^{tmp_path}/class_names.json: names 3 classes but the '
                     'head has 2 outputs; delete it') as e:
    read_class_names(str(tmp_path), 2)
  assert '\n' not in str(e.value)
