"""FedProx on MNIST, written for AlphaFed 0.4.x; it runs unchanged on alphafed-flwr.

As ``mnist_fedavg.py``, but the local loss goes through ``self.calc_prox_loss``, which adds
(mu/2)·||w − w_global||² (squared, unlike the SDK's own FedProx)::

    python -m alphafed_flwr.simulation simulations/sdk/mnist_fedprox.py:MnistFedProx \
        --num-clients 3 --rounds 3 --partition dirichlet --alpha 0.1
"""

from time import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import logger
from alphafed.fed_prox import FedProxScheduler
from alphafed.fs import get_dataset_dir

from sdk_net import SmallCNN

TRANSFORM = torchvision.transforms.Compose([
    torchvision.transforms.ToTensor(),
    torchvision.transforms.Normalize((0.1307,), (0.3081,)),
])


class MnistFedProx(FedProxScheduler):

    def __init__(self,
                 max_rounds: int = 0,
                 merge_epochs: int = 1,
                 mu: float = 0.01,
                 calculation_timeout: int = 300,
                 log_rounds: int = 0,
                 involve_aggregator: bool = False,
                 batch_size: int = 32,
                 learning_rate: float = 0.05,
                 momentum: float = 0.5) -> None:
        super().__init__(max_rounds=max_rounds,
                         merge_epochs=merge_epochs,
                         mu=mu,
                         calculation_timeout=calculation_timeout,
                         log_rounds=log_rounds,
                         involve_aggregator=involve_aggregator)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        torch.manual_seed(42)

    def build_model(self) -> nn.Module:
        return SmallCNN().to(self.device)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=self.learning_rate, momentum=self.momentum)

    def build_train_dataloader(self) -> DataLoader:
        dataset = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=True,
                                             download=True, transform=TRANSFORM)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

    def build_test_dataloader(self) -> DataLoader:
        dataset = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=False,
                                             download=True, transform=TRANSFORM)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def train_an_epoch(self) -> None:
        self.model.train()
        total, batches = 0.0, 0
        for data, labels in self.train_loader:
            data, labels = data.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.calc_prox_loss(F.nll_loss, self.model(data), labels)
            loss.backward()
            self.optimizer.step()
            total, batches = total + loss.item(), batches + 1
        self.push_log(f'round {self.current_round} mu {self.mu} train loss {total / max(batches, 1):.4f}')

    def run_test(self):
        start = time()
        self.model.eval()
        test_loss, correct = 0.0, 0
        with torch.no_grad():
            for data, labels in self.test_loader:
                data, labels = data.to(self.device), labels.to(self.device)
                output = self.model(data)
                test_loss += F.nll_loss(output, labels, reduction='sum').item()
                correct += (output.argmax(dim=1) == labels).sum().item()
        test_loss /= len(self.test_loader.dataset)
        accuracy = correct / len(self.test_loader.dataset)
        logger.info(f'Test set: average loss {test_loss:.4f}, accuracy {accuracy:.4f}')
        self.push_log(f'round {self.current_round} test accuracy {accuracy:.4f}')
        self.tb_writer.add_scalar('timer/run_time', time() - start, self.current_round)
        self.tb_writer.add_scalar('test_results/accuracy', accuracy, self.current_round)


if __name__ == '__main__':
    MnistFedProx(max_rounds=3, log_rounds=1, mu=0.01).submit(task_id='sdk-mnist-fedprox')
