"""fitting: estimate the toy model's parameters from rollout logs and test its predictions.

Reads only the log contract (```docs/rollouts.md```); never imports
``organisms``. Public surface (re-exported from small private modules):

- logs (from the contract module :mod:`physrl.contract`): :func:`load_runs`,
  :func:`read_table`, :class:`Run`, :class:`Manifest`, :class:`Environment`,
  :class:`MeasuredPrior`, :class:`LogValidationError`
- observations: :func:`observations`, :func:`jeffreys_interval`
- synthetic logs: :func:`synthesize`, :data:`DEFAULT_TRUTH`
- the fit: :func:`fit`, :func:`compare`, :class:`FitResult`, :class:`FitDiagnostics`,
  :class:`ParameterEstimate`, :class:`ParamInfo`, :class:`FitSpec`, :class:`InsufficientData`
- prediction check: :func:`predict`, :func:`in_sample`, :class:`Prediction`,
  :class:`PredictionMetrics`, :func:`save_prediction`, :func:`sample_parameters`
  (figures in ``fitting._figures``)
- protocol: :func:`protocol_final_p`, :func:`critical_diversity`
- leave-one-run-out: :func:`cross_validate`, :class:`CrossValidation`
"""

from ._crossval import CrossValidation as CrossValidation
from ._crossval import cross_validate as cross_validate
from ._fit import FitDiagnostics as FitDiagnostics
from ._fit import FitResult as FitResult
from ._fit import InsufficientData as InsufficientData
from ._fit import ParameterEstimate as ParameterEstimate
from ._fit import compare as compare
from ._fit import fit as fit
from ._json import json_safe as json_safe
from physrl.contract import Environment as Environment
from physrl.contract import LogValidationError as LogValidationError
from physrl.contract import Manifest as Manifest
from physrl.contract import MeasuredPrior as MeasuredPrior
from physrl.contract import Run as Run
from physrl.contract import jeffreys_interval as jeffreys_interval
from physrl.contract import load_runs as load_runs
from physrl.contract import read_table as read_table

from ._engine import TRANSFERS as TRANSFERS
from ._observations import observations as observations
from ._problem import FitSpec as FitSpec
from ._problem import ParamInfo as ParamInfo
from ._protocol import CriticalDiversity as CriticalDiversity
from ._protocol import critical_diversity as critical_diversity
from ._protocol import protocol_final_p as protocol_final_p
from ._synthesize import DEFAULT_TRUTH as DEFAULT_TRUTH
from ._synthesize import identifiable_truth as identifiable_truth
from ._synthesize import synthesize as synthesize
from ._predict import Prediction as Prediction
from ._predict import PredictionMetrics as PredictionMetrics
from ._predict import in_sample as in_sample
from ._predict import predict as predict
from ._predict import sample_parameters as sample_parameters
from ._predict import save_prediction as save_prediction
