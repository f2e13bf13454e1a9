"""Wrong implementations of problem set 2's functions and class: the mistakes the course warns about."""

import numpy as np

import normcourse.reference as ref
from normcourse.problems import ps02_batchnorm_state as ps02


def _affine_channels(y, weight, bias):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if weight is not None:
        y = y * np.reshape(weight, shape)
    if bias is not None:
        y = y + np.reshape(bias, shape)
    return y


def _step(x, running_mean, running_var, weight, bias, training, momentum, eps, *, keras=False,
          biased_running=False, rebind=False, batch_stats_in_eval=False, update_in_eval=False):
    """A BatchNorm step with one switchable mistake."""
    x64 = np.asarray(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x64.ndim))
    shape = (1, -1) + (1,) * (x64.ndim - 2)
    n = x64.size // x64.shape[1]
    batch_mean, batch_var = x64.mean(axes), x64.var(axes)
    use_batch = training or batch_stats_in_eval
    if (training or update_in_eval) and running_mean is not None:
        new_var = batch_var if biased_running else batch_var * n / max(n - 1, 1)
        keep = momentum if keras else 1 - momentum
        if rebind:
            running_mean = keep * running_mean + (1 - keep) * batch_mean
            running_var = keep * running_var + (1 - keep) * new_var
        else:
            running_mean[...] = keep * running_mean + (1 - keep) * batch_mean
            running_var[...] = keep * running_var + (1 - keep) * new_var
    mean, var = (batch_mean, batch_var) if use_batch else (running_mean, running_var)
    y = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return _affine_channels(y, weight, bias).astype(np.asarray(x).dtype)


def _step_with(name, **mistake):
    def step(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        return _step(x, running_mean, running_var, weight, bias, training, momentum, eps, **mistake)
    step.__name__ = name
    return step


_STATE = {"calls": 0}


def _step_with_memory(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Keeps its own count across calls and halves the momentum after the first call (state that leaks
    between calls: only a second call on the same arrays shows it)."""
    _STATE["calls"] += 1
    m = momentum if _STATE["calls"] % 2 else momentum / 2
    return ref.batch_norm(x, running_mean, running_var, weight, bias, training, m, eps)


def _eval_affine_forgot_scale(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    scale, _ = ps02.eval_affine_reference(running_mean, running_var, weight, bias, eps)
    return scale, (0.0 if bias is None else bias) - running_mean


def _eval_affine_eps_outside(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    scale = 1.0 / (np.sqrt(running_var) + eps)
    scale = scale * weight if weight is not None else scale
    shift = -running_mean * scale + (bias if bias is not None else 0.0)
    return scale, shift


def _eval_affine_in_place(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Right values, but adds eps into the caller's running_var."""
    running_var += eps
    scale = 1.0 / np.sqrt(running_var)
    scale = scale * weight if weight is not None else scale
    return scale, -running_mean * scale + (bias if bias is not None else 0.0)


class _BatchNorm:
    """A BatchNorm with one switchable mistake (class attributes below)."""

    keras = off_by_one = count_eval = biased_running = batch_stats_in_eval = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        self.eps, self.momentum = eps, momentum
        self.weight = np.ones(num_features) if affine else None
        self.bias = np.zeros(num_features) if affine else None
        self.running_mean, self.running_var = np.zeros(num_features), np.ones(num_features)
        self.num_batches_tracked = 0
        self.training = True

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x):
        if self.training or self.count_eval:
            self.num_batches_tracked += 1
        if not self.training:
            return _step(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps,
                         batch_stats_in_eval=self.batch_stats_in_eval)
        k = self.num_batches_tracked + self.off_by_one
        factor = 1.0 / k if self.momentum is None else self.momentum
        return _step(x, self.running_mean, self.running_var, self.weight, self.bias, True, factor, self.eps,
                     keras=self.keras, biased_running=self.biased_running)


class BatchNormKeras(_BatchNorm):
    """Momentum weighs the old value."""
    keras = True


class BatchNormBatchStatsInEval(_BatchNorm):
    """Normalizes with the batch's statistics in evaluation mode too (the running ones are still right)."""
    batch_stats_in_eval = True


class BatchNormCountsEval(_BatchNorm):
    """Counts evaluation steps in num_batches_tracked."""
    count_eval = True


class BatchNormBiasedRunningVar(_BatchNorm):
    """Stores the biased batch variance in running_var."""
    biased_running = True


class BatchNormCumulativeOffByOne(_BatchNorm):
    """momentum=None with factor 1 / (k + 1) instead of 1 / k."""
    off_by_one = True


class BatchNormSharedState(_BatchNorm):
    """Running statistics kept in class-level arrays: every module shares (and inherits) them."""
    _shared: dict = {}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        mean, var = self._shared.setdefault(num_features, (np.zeros(num_features), np.ones(num_features)))
        self.running_mean, self.running_var = mean, var


class BatchNormEvalReturnsNone(_BatchNorm):
    """eval() sets the mode but forgets to return the module."""

    def eval(self):
        self.training = False


def _experiment(momenta, num_steps=300, batch_size=16, seeds=(0, 1, 2), num_features=8, *, reuse=False,
                evaluate=False, raw_units=False, transpose=False):
    """The experiment with one switchable mistake, on the reference's running-mean update."""
    errors = np.empty((len(momenta), len(seeds), num_steps))
    for j, seed in enumerate(seeds):
        mu, sigma, batches = ps02.experiment_data(np.random.default_rng(seed), num_steps, batch_size, num_features)
        running = np.zeros(num_features)
        for i, momentum in enumerate(momenta):
            if not reuse:
                running = np.zeros(num_features)
            for k, x in enumerate(batches):
                factor = 1.0 / (k + 1) if momentum is None else momentum
                if not evaluate:
                    running = (1 - factor) * running + factor * x.mean(axis=0)
                scale = 1.0 if raw_units else sigma
                errors[i, j, k] = np.sqrt(np.mean(((running - mu) / scale) ** 2))
    return errors.transpose(1, 0, 2).copy() if transpose else errors


def _experiment_with(name, **mistake):
    def experiment(momenta, num_steps=300, batch_size=16, seeds=(0, 1, 2), num_features=8):
        return _experiment(momenta, num_steps, batch_size, seeds, num_features, **mistake)
    experiment.__name__ = name
    return experiment


WRONG = {
    "batch_norm_step": [_step_with("keras_momentum", keras=True), _step_with("biased_running_var", biased_running=True),
                        _step_with("rebinds_running_stats", rebind=True),
                        _step_with("batch_stats_in_eval", batch_stats_in_eval=True),
                        _step_with("updates_in_eval", update_in_eval=True), _step_with_memory],
    "eval_affine": [_eval_affine_forgot_scale, _eval_affine_eps_outside, _eval_affine_in_place],
    "BatchNorm": [BatchNormKeras, BatchNormBatchStatsInEval, BatchNormCountsEval, BatchNormBiasedRunningVar, BatchNormCumulativeOffByOne,
                  BatchNormSharedState, BatchNormEvalReturnsNone],
    "running_stats_experiment": [_experiment_with("one_module_for_every_momentum", reuse=True),
                                 _experiment_with("running_mean_never_updated", evaluate=True),
                                 _experiment_with("seeds_before_momenta", transpose=True)],
}

#: The experiment runs the learner's own BatchNorm, by design: a bug there may cost the experiment too.
USES = {"running_stats_experiment": ("BatchNorm",)}
