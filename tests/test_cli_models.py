"""The model commands of `mvp` fail with one line naming the problem, not a traceback."""


def test_cli_names_a_missing_checkpoint_instead_of_a_traceback(tmp_path, capsys):
    from flows.cli import main
    assert main(["evaluate", str(tmp_path / "absent.pt"), "--warehouse", str(tmp_path)]) == 2
    assert "absent.pt" in capsys.readouterr().err
