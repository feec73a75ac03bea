import pytest
import torch

from cebra_halfunet import ComplexLargeUNetDecoderOnly, HalfUNetDecoder, UNetDecoderOnly
from cebra_halfunet.blocks import PixelShuffleUp, halving_sizes
from cebra_halfunet.losses import make_loss, per_member
from cebra_halfunet.networks import DecoderEnsemble

SIZES = [(8, 16), (16, 32), (37, 61), (100, 150), (64, 128), (2, 3), (1, 7)]


def embeddings(batch=4, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(batch, width, generator=generator), dim=1)


@pytest.mark.parametrize("latent_dim, body", [(16, UNetDecoderOnly), (1024, ComplexLargeUNetDecoderOnly)])
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_channels_first_at_the_exact_size(latent_dim, body, shape, channels):
    decoder = HalfUNetDecoder(8, channels, shape, latent_dim)
    assert isinstance(decoder.body, body)
    out = decoder(embeddings())
    assert out.shape == (4, channels, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("latent_dim", [64, 1024])
@pytest.mark.parametrize("shape", [(128, 256), (256, 512)])
def test_full_frame_sizes(latent_dim, shape):
    decoder = HalfUNetDecoder(8, 3, shape, latent_dim)
    with torch.no_grad():
        assert decoder(embeddings(batch=1)).shape == (1, 3, *shape)


def test_body_choice_threshold_and_latent_default():
    assert isinstance(HalfUNetDecoder(8, latent_dim=1023, output_shape=(8, 16)).body, UNetDecoderOnly)
    assert isinstance(HalfUNetDecoder(8, latent_dim=1024, output_shape=(8, 16)).body, ComplexLargeUNetDecoderOnly)
    decoder = HalfUNetDecoder(1024, output_shape=(8, 16))
    assert decoder.latent_dim == 1024 and isinstance(decoder.body, ComplexLargeUNetDecoderOnly)


@pytest.mark.parametrize(
    "latent_dim, body, expected",
    [(16, "light", UNetDecoderOnly), (1024, "light", UNetDecoderOnly), (16, "large", ComplexLargeUNetDecoderOnly),
     (16, "auto", UNetDecoderOnly), (1024, "auto", ComplexLargeUNetDecoderOnly)],
)
def test_body_says_which_body_whatever_the_latent_width(latent_dim, body, expected):
    decoder = HalfUNetDecoder(8, 1, (8, 16), latent_dim, body=body)
    assert isinstance(decoder.body, expected) and decoder.is_large == (expected is ComplexLargeUNetDecoderOnly)
    with torch.no_grad():
        assert decoder(embeddings(batch=2)).shape == (2, 1, 8, 16)


def test_an_unknown_body_is_refused():
    with pytest.raises(ValueError, match="body must be one of"):
        HalfUNetDecoder(8, body="medium")


@pytest.mark.parametrize("body", [UNetDecoderOnly, ComplexLargeUNetDecoderOnly])
def test_bodies_work_on_their_own(body):
    net = body(32, output_channels=3, output_shape=(16, 32))
    assert net(torch.randn(2, 32)).shape == (2, 3, 16, 32)


def test_halving_sizes_end_exactly_at_the_output():
    assert halving_sizes((128, 256)) == [(4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256)]
    assert halving_sizes((37, 61)) == [(5, 8), (10, 16), (19, 31), (37, 61)]
    assert halving_sizes((3, 3)) == [(3, 3)]


@pytest.mark.parametrize("latent_dim", [16, 1024])
@pytest.mark.parametrize("shape", [(8, 16), (37, 61), (3, 5), (1, 6)])
def test_every_parameter_receives_gradient(latent_dim, shape):
    torch.manual_seed(0)
    decoder = HalfUNetDecoder(8, 3, shape, latent_dim)
    decoder(embeddings(batch=3)).square().mean().backward()
    dead = [name for name, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("latent_dim", [16, 1024])
def test_output_scale_at_initialisation_is_that_of_images(latent_dim):
    torch.manual_seed(0)
    out = HalfUNetDecoder(8, 1, (16, 32), latent_dim)(embeddings(batch=16)).detach()
    assert 1e-3 < out.std() < 1.0
    assert out.abs().mean() < 1.0


def test_icnr_survives_construction():
    torch.manual_seed(0)
    decoder = HalfUNetDecoder(8, 1, (16, 32), 1024)
    ups = [m for m in decoder.modules() if isinstance(m, PixelShuffleUp)]
    assert ups
    for up in ups:
        weight = up.conv.weight.detach()
        groups = weight.view(weight.shape[0] // 4, 4, *weight.shape[1:])
        assert torch.equal(groups, groups[:, :1].expand_as(groups)), "each 2x2 sub-pixel group shares one kernel"
        assert weight.abs().sum() > 0


def test_icnr_starts_free_of_checkerboard():
    torch.manual_seed(0)
    up = PixelShuffleUp(4, 2, (8, 8))
    out = up(torch.rand(1, 4, 4, 4)).detach()
    blocks = out.unfold(2, 2, 2).unfold(3, 2, 2)  # (1, C, 4, 4, 2, 2)
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))


@pytest.mark.parametrize("activation, low, high", [("sigmoid", 0, 1), ("tanh", -1, 1)])
def test_output_activation(activation, low, high):
    decoder = HalfUNetDecoder(8, 1, (8, 16), 32, output_activation=activation)
    out = decoder(embeddings() * 100)
    assert out.min() >= low and out.max() <= high


@pytest.mark.parametrize("latent_dim", [16, 1024])
def test_gradient_checkpointing_gives_same_outputs_and_gradients(latent_dim):
    torch.manual_seed(0)
    plain = HalfUNetDecoder(8, 3, (16, 32), latent_dim)
    saving = HalfUNetDecoder(8, 3, (16, 32), latent_dim, gradient_checkpointing=True)
    saving.load_state_dict(plain.state_dict())
    x = embeddings()
    out_plain, out_saving = plain(x), saving(x)
    torch.testing.assert_close(out_saving, out_plain)
    out_plain.square().mean().backward()
    out_saving.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), saving.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_gradient_checkpointing_uses_less_memory():
    from torch.autograd.graph import saved_tensors_hooks

    def saved_bytes(checkpointing):
        torch.manual_seed(0)
        decoder = HalfUNetDecoder(8, 1, (64, 128), 64, gradient_checkpointing=checkpointing)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            decoder(embeddings(batch=8))
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_same_seed_same_weights_and_outputs():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(HalfUNetDecoder(8, 1, (8, 16), 1024)(embeddings()).detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_dim": 0}, ValueError, "input_dim"),
        ({"input_dim": -3}, ValueError, "input_dim"),
        ({"input_dim": 2.5}, TypeError, "input_dim"),
        ({"input_dim": True}, TypeError, "input_dim"),
        ({"output_channels": 0}, ValueError, "output_channels"),
        ({"latent_dim": 0}, ValueError, "latent_dim"),
        ({"output_shape": (64,)}, ValueError, "output_shape"),
        ({"output_shape": 64}, ValueError, "output_shape"),
        ({"output_shape": (64, 0)}, ValueError, "output_shape"),
        ({"output_shape": (64, -8)}, ValueError, "output_shape"),
        ({"output_shape": (64.0, 128)}, TypeError, "output_shape"),
        ({"output_activation": "relu"}, ValueError, "output_activation"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    arguments = {"input_dim": 8, "output_shape": (8, 16)} | kwargs
    with pytest.raises(error, match=match):
        HalfUNetDecoder(**arguments)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(4, 7), ValueError, r"shape \(batch, 8\)"),
        (torch.randn(8), ValueError, r"shape \(batch, 8\)"),
        (torch.randn(2, 4, 8), ValueError, r"shape \(batch, 8\)"),
        (torch.ones(4, 8, dtype=torch.long), TypeError, "floating-point"),
        ([[0.0] * 8], TypeError, "torch.Tensor"),
    ],
)
def test_bad_forward_input(x, error, match):
    with pytest.raises(error, match=match):
        HalfUNetDecoder(8, output_shape=(8, 16))(x)


def test_ensemble_returns_every_member_in_training_and_their_mean_in_eval():
    torch.manual_seed(0)
    ensemble = DecoderEnsemble(HalfUNetDecoder(8, 3, (8, 16), 16) for _ in range(3))
    z = embeddings()
    outputs = ensemble(z)
    assert outputs.shape == (3, 4, 3, 8, 16)
    assert not torch.equal(outputs[0], outputs[1])  # each member has its own initialisation
    with torch.no_grad():
        mean = ensemble.eval()(z)
    assert mean.shape == (4, 3, 8, 16)
    torch.testing.assert_close(mean, outputs.detach().mean(dim=0))


def test_an_ensemble_needs_members():
    with pytest.raises(ValueError, match="members"):
        DecoderEnsemble([])


@pytest.mark.parametrize("name", ["mse", "l1", "ssim", "l1_ssim"])
def test_per_member_loss_is_the_mean_of_the_members_losses(name):
    loss = make_loss(name)
    generator = torch.Generator().manual_seed(0)
    members, target = torch.rand(3, 4, 1, 12, 12, generator=generator), torch.rand(4, 1, 12, 12, generator=generator)
    expected = sum(loss(member, target) for member in members) / 3
    torch.testing.assert_close(per_member(loss)(members, target), expected)
    assert per_member(loss)(members, target) > loss(members.mean(dim=0), target)  # not the loss of the mean
    torch.testing.assert_close(per_member(loss)(members[0], target), loss(members[0], target))


def test_each_member_learns_from_its_own_loss_alone():
    torch.manual_seed(0)
    ensemble = DecoderEnsemble(HalfUNetDecoder(8, 1, (8, 16), 16) for _ in range(2))
    z, target, loss = embeddings(), torch.rand(4, 1, 8, 16), make_loss("l1")
    per_member(loss)(ensemble(z), target).backward()
    in_ensemble = [p.grad.clone() for p in ensemble.members[0].parameters()]
    ensemble.zero_grad()
    loss(ensemble.members[0](z), target).backward()
    for shared, alone in zip(in_ensemble, ensemble.members[0].parameters()):
        torch.testing.assert_close(2 * shared, alone.grad)  # the mean over 2 members halves it
