"""Prints the tables of README.md from the JSON outputs of diagnose.py.

    python runs/unpublished/vgg16_cbp_diagnosis/summarize.py > runs/unpublished/vgg16_cbp_diagnosis/tables.txt
"""
import json
from pathlib import Path

D = Path(__file__).resolve().parent


def start_table():
    r = json.loads((D / "start.json").read_text())
    for name in ("vgg16_cifar10_bin_calib", "vgg16_cifar10_ter_calib"):
        o = r[name]
        print(f"\n## {name}: first real train_step (docs/method.md §E.4 recipe, T=32, batch 32, augmented), loss {o['loss']:.2f}")
        print("| layer | s = mean|W| | mean |grad| | median |grad| | % clipped | lr*mean|clip(grad)|/s | mean |dw|/s | % codes flipped |")
        print("|---|---|---|---|---|---|---|---|")
        for n, v in o["layers"].items():
            print(f"| {n} | {v['s']:.4f} | {v['grad_mean_abs']:.4f} | {v['grad_median_abs']:.4f} | "
                  f"{100 * v['grad_frac_clipped']:.2f} | {v['lr_x_grad_over_s']:.3f} | {v['update_mean_abs_over_s']:.3f} | "
                  f"{100 * v['flip_fraction']:.2f} |")
        print("fp32 parameters, mean |grad| before clipping:",
              ", ".join(f"{k} {v:.3g}" for k, v in o["other_grad_mean_abs"].items()))
    print("\n## logits (scores = sum over T of classifier output), same batch of 32")
    print("| model / mode | mean |score| | max-min | CE | top-1 | mean max softmax | mean |dCE/dscore| |")
    print("|---|---|---|---|---|---|---|")
    rows = dict(r["references_same_batch"])
    rows["binary_child_start/train"] = r["vgg16_cifar10_bin_calib"]["logits_train_mode"]
    rows["ternary_child_start/train"] = r["vgg16_cifar10_ter_calib"]["logits_train_mode"]
    for k, v in rows.items():
        print(f"| {k} | {v['scores_mean_abs']:.1f} | {v['scores_max_minus_min']:.1f} | {v['ce']:.2f} | "
              f"{100 * v['top1']:.1f} | {v['max_softmax_mean']:.3f} | {v['dCE_dscores_mean_abs']:.4f} |")


def train_tables():
    files = sorted(D.glob("train_*.json"))
    if not files:
        return
    print("\n## training loss per step on a fixed 256-image subset (no augmentation)")
    for f in files:
        r = json.loads(f.read_text())
        h = r["history"]
        a = r["args"]
        losses = " ".join(f"{x['loss']:.2f}" for x in h)
        flips = " ".join(f"{x['flip_fraction_all']:.4f}" for x in h[:10])
        last = h[-1]["flip_fraction_per_layer"]
        worst = max(last, key=last.get)
        fin = r["final_eval_subset"]
        print(f"\n### {f.stem}: T={a['T']} batch={a['batch']} lr={a['lr']} dropout={'off' if a['no_dropout'] else 'on'} "
              f"loss={'mean' if a['loss_mean_over_t'] else 'sum'} over T, {len(h)} steps")
        print(f"loss per step: {losses}")
        print(f"train acc per step (of {a['batch']}): {' '.join(str(x['correct']) for x in h)}")
        print(f"fraction of all quantized codes flipped, steps 0-9: {flips}")
        print(f"flips at the last step, most in {worst}: {last[worst]:.4f}")
        print(f"eval mode on the 256 images after training: CE {fin['ce']:.3f}, top-1 {100 * fin['top1']:.1f} %")
        if "layers_step0" in h[0]:
            print("|dw|/s at step 0 per layer:", " ".join(f"{k.replace('features.', 'f').replace('.conv', '')}={v['update_mean_abs_over_s']:.4f}" for k, v in h[0]["layers_step0"].items()))
            print("features.16 |dw|/s per step:", " ".join(f"{x['update_over_s_per_layer']['features.16.conv']:.3f}" for x in h))
        if "firing_rates_end" in r:
            print("firing rate per spiking layer, start:", " ".join(f"{v:.3f}" for v in r["firing_rates_start"].values()))
            print("firing rate per spiking layer, end:  ", " ".join(f"{v:.3f}" for v in r["firing_rates_end"].values()))


def alexnet_table():
    f = D / "alexnet.json"
    if not f.exists():
        return
    r = json.loads(f.read_text())
    h = r["history"]
    print("\n## AlexNet TSSL-BP binary child (tssl_cbp recipe: AdamW lr 2e-4, norm clip 1), batch", r["args"]["batch"])
    print("loss per step:", " ".join(f"{x['loss']:.1f}" for x in h))
    print("flip fraction per step:", " ".join(f"{x['flip_fraction_all']:.5f}" for x in h))
    print("| layer | s | mean |grad| (before norm clip) | |dw|/s step 0 | % codes flipped step 0 |")
    print("|---|---|---|---|---|")
    for k, v in h[0]["layers_step0"].items():
        print(f"| {k} | {v['s']:.4f} | {v['grad_mean_abs']:.4g} | {v['update_mean_abs_over_s']:.4f} | {100 * v['flip_fraction']:.3f} |")
    print("max over layers of |dw|/s per step:", " ".join(f"{max(x['update_over_s_per_layer'].values()):.4f}" for x in h))


if __name__ == "__main__":
    start_table()
    train_tables()
    alexnet_table()
