import pytest
import torch

from kaecompress import KaecError
from kaecompress.nn.activations import ACTIVATIONS
from kaecompress.nn.layers import KAELayer
from kaecompress.nn.models import CNNKAE, count_parameters

STUDY_PRINTOUT = """CNNKAE(
  (encoder): Sequential(
    (0): Conv2d(1, 32, kernel_size=(7, 7), stride=(1, 1))
    (1): ReLU()
    (2): Flatten(start_dim=-3, end_dim=-1)
    (3): KAELayer(input_dim=15488, out_dim=16, order=3, addbias=True)
  )
  (decoder): Sequential(
    (0): Linear(in_features=16, out_features=15488, bias=True)
    (1): Reshape(shape=(32, 22, 22))
    (2): ConvTranspose2d(32, 1, kernel_size=(7, 7), stride=(1, 1))
    (3): Sigmoid()
  )
)"""


def test_printout_matches_the_study():
    model = CNNKAE(shape=(1, 28, 28), latent_dim=16, channels=[32], kernel_size=7, encoder_kae_order=3,
                   decoder_kae_order=0, activation="relu", output_activation="sigmoid")
    assert repr(model) == STUDY_PRINTOUT


@pytest.mark.parametrize("ks,enc,dec,expected", [
    (7, 0, 0, 514_289), (7, 3, 0, 1_257_713), (7, 0, 3, 1_257_713), (7, 3, 3, 2_001_137),
    (3, 0, 0, 714_481), (3, 3, 0, 1_752_817), (3, 0, 3, 1_752_817), (3, 3, 3, 2_791_153),
])
def test_parameter_counts_equal_the_study(ks, enc, dec, expected):
    model = CNNKAE(shape=(1, 28, 28), latent_dim=16, channels=[32], kernel_size=ks, encoder_kae_order=enc,
                   decoder_kae_order=dec, activation="relu", output_activation="sigmoid")
    assert count_parameters(model) == expected


def test_encoder_and_decoder_work_on_their_own(mnist_val):
    model = CNNKAE(channels=[8, 16], kernel_size=5, encoder_kae_order=2, decoder_kae_order=2,
                   activation="gelu", latent_activation="tanh", output_activation="sigmoid")
    x = mnist_val[:5]
    z = model.encoder(x)
    assert z.shape == (5, 16) and z.abs().max() <= 1  # tanh latent
    y = model.decoder(z)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    torch.testing.assert_close(model(x), y)
    assert model.encoder(x[0]).shape == (16,)  # unbatched images too
    assert model.compression_ratio == 49.0
    assert isinstance(model.encoder[-2], KAELayer) and isinstance(model.decoder[0], KAELayer)


def test_activations_by_name_any_case():
    model = CNNKAE(channels=[4, 4], kernel_size=3, activation="SiLU", output_activation="None")
    names = [type(m).__name__ for m in model.decoder]
    assert names == ["Linear", "Reshape", "ConvTranspose2d", "SiLU", "ConvTranspose2d"]
    assert {"none", "relu", "sigmoid", "tanh", "gelu", "silu"} <= set(ACTIVATIONS)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(KaecError, match=r"unknown activation 'swishy'.*relu.*sigmoid"):
        CNNKAE(activation="swishy")


def test_kernel_that_does_not_fit_is_a_clear_error():
    with pytest.raises(KaecError, match="do not fit a 28x28 input"):
        CNNKAE(channels=[8, 8, 8], kernel_size=11)
