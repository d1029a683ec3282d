"""`--show-recipe` prints the settings that act in each stage, with the entry's real T."""
from _train_helpers import script


def shown(name, capsys, *flags):
    script("reproduce").main([name, "--show-recipe", *flags])
    stages, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" "):
            current = stages.setdefault(line.split(" / ")[1], {})
        else:
            key, value = line.split(maxsplit=1)
            current[key] = value
    return stages


def test_tsslbp_shows_its_T_and_no_other_pipelines_settings(capsys):
    stages = shown("alexnet_cifar10_bin_tsslbp", capsys)
    assert set(stages) == {"tssl_fp32", "tssl_cbp"}
    assert all(s["T"] == "5" for s in stages.values())
    assert not {"use_bn", "trial", "calib", "calib_batches", "momentum"} & set().union(*stages.values())
    assert "lambda_lr" not in stages["tssl_fp32"] and stages["tssl_cbp"]["lambda_lr"] == "0.0001"
    assert stages["tssl_fp32"]["weight_clamp"] == "4.0" and "weight_clamp" not in stages["tssl_cbp"]


def test_calibration_settings_show_in_the_calibration_stages(capsys):
    stages = shown("vgg16_cifar10_bin_calib", capsys, "--T", "16")
    assert set(stages) == {"calib_ann", "calib_convert", "calib_cbp"}
    assert all(s["T"] == "16" and s["calib"] == "light" for s in stages.values())
    assert stages["calib_ann"]["lr_schedule"] == "cosine" and "lr_drop_fractions" not in stages["calib_ann"]
    assert stages["calib_cbp"]["momentum"] == "0.9"
